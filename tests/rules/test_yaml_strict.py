"""YAML that cannot lie: duplicate keys are errors at file:line, one file's error does not
cascade into others, and type errors say what was expected with an example."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", dst)
    return dst


def errors(mdir: Path) -> list[str]:
    rs, diags = load_ruleset(mdir)
    assert rs is None
    return [str(d).split("/mappings/", 1)[1] for d in diags if d.level == "error"]


def insert_after(path: Path, anchor: str, line: str) -> int:
    """Insert ``line`` after the first line containing ``anchor``; return its 1-based number."""
    lines = path.read_text().splitlines()
    i = next(n for n, x in enumerate(lines) if anchor in x)
    lines.insert(i + 1, line)
    path.write_text("\n".join(lines) + "\n")
    return i + 2


def test_second_where_is_a_duplicate_key_error(mdir):
    f = mdir / "rules" / "discharge.yaml"
    n = insert_after(f, "where: class.code = 'IMP' and hospitalization", "    where: class.code = 'EMER'")
    assert errors(mdir) == [f"rules/discharge.yaml:{n}:5: error[duplicate-key] duplicate key 'where' (first at line {n - 1}); "
                            "YAML would silently keep only the last one"]


@pytest.mark.parametrize("name, anchor, dup", [
    ("destinations.yaml", "    type: webhook", "    type: webhook"),
    ("sources.yaml", "      timezone: America/New_York", "      timezone: UTC"),
    ("settings.yaml", "site_timezone:", "site_timezone: UTC"),
    ("valuesets/hospice.yaml", "valueset: hospice", "valueset: hospice2"),
])
def test_duplicate_keys_in_every_mappings_file(mdir, name, anchor, dup):
    n = insert_after(mdir / name, anchor, dup)
    errs = errors(mdir)
    assert errs[0].startswith(f"{name}:{n}:") and "error[duplicate-key]" in errs[0], errs
    assert len(errs) == 1, errs  # nothing cascades from it


def test_duplicate_key_in_a_golden_test_file_fails_validate(mdir, capsys):
    f = mdir / "rules" / "appointments_test.yaml"
    lines = f.read_text().splitlines()
    i = next(n for n, x in enumerate(lines) if x.strip().startswith("- name:"))
    indent = lines[i].index("-") + 2
    lines.insert(i + 1, " " * indent + "name: again")
    f.write_text("\n".join(lines) + "\n")
    assert main(["mappings", "validate", str(mdir)]) == 1
    err = capsys.readouterr().err
    assert f"appointments_test.yaml:{i + 2}:{indent + 1}: error[duplicate-key] duplicate key 'name'" in err


def test_indentation_slip_in_destinations_gives_one_error(mdir):
    f = mdir / "destinations.yaml"
    f.write_text(f.read_text().replace("\n    baa: true", "\n     baa: true"))
    errs = errors(mdir)
    assert len(errs) == 1, errs
    assert errs[0].startswith("destinations.yaml:") and "indentation" in errs[0]


def test_invalid_destination_field_does_not_cascade_into_rules(mdir):
    f = mdir / "destinations.yaml"
    f.write_text(f.read_text().replace("baa: true", "baa: perhaps"))
    errs = errors(mdir)
    assert errs == ["destinations.yaml:7:5: error[wrong-type] destinations.0.baa: expected true or false, "
                    "e.g. baa: true (got the text 'perhaps')"]


def test_broken_valueset_file_does_not_cascade(mdir):
    (mdir / "valuesets" / "community-discharge.yaml").write_text("valueset: community-discharge\ncodes: [\n")
    errs = errors(mdir)
    assert len(errs) == 1 and errs[0].startswith("valuesets/community-discharge.yaml:"), errs


def test_scalar_on_says_what_was_expected(mdir):
    (mdir / "rules" / "zz.yaml").write_text(
        "rules:\n  - id: r1\n    on: appointment.noshow\n    purpose: care-coordination\n"
        "    emit: {trigger: t1, destinations: webhook}\n")
    assert errors(mdir) == [
        "rules/zz.yaml:3:5: error[wrong-type] rules.0.on: expected a list of event names, e.g. on: [appointment.noshow] "
        "(got the text 'appointment.noshow')",
        "rules/zz.yaml:5:25: error[wrong-type] rules.0.emit.destinations: expected a list of destination names, "
        "e.g. destinations: [webhook] (got the text 'webhook')",
    ]
