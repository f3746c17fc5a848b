"""Invalid rule files: every error names file:line:col with a plain explanation; exit 1."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
rules:
  - id: r1
    on: [appointment.booked]
    purpose: treatment-reminder
    on_no_longer_matching: cancel
    emit: {trigger: t1, destinations: [webhook]}
"""


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", dst, ignore=shutil.ignore_patterns("*_test.yaml"))
    return dst


def diag_for(mdir: Path, text: str) -> list[str]:
    (mdir / "rules" / "zz_bad.yaml").write_text(text)
    rs, diags = load_ruleset(mdir)
    assert rs is None
    return [str(d) for d in diags if "zz_bad.yaml" in d.path and d.level == "error"]


@pytest.mark.parametrize("bad, line, col, code, words", [
    (GOOD.replace("    purpose:", "    dealy: 2d\n    purpose:"), 4, 5, "unknown-field", "unknown field 'dealy'"),
    (GOOD.replace("    on: [appointment.booked]", "    when: {aftr: 2d}\n    on: [appointment.booked]"), 3, 12, "unknown-field", "did you mean 'after'"),
    (GOOD.replace("appointment.booked", "appointment.bookd"), 3, 10, "unknown-event", "did you mean 'appointment.booked'"),
    (GOOD.replace("    purpose:", "    where: start.exists(\n    purpose:"), 4, 25, "fhirpath", "FHIRPath syntax: the expression ends"),
    (GOOD.replace("[webhook]", "[webhok]"), 6, 40, "unknown-destination", "did you mean 'webhook'"),
    (GOOD.replace("    purpose:", "    when: {after: 2 days}\n    purpose:"), 4, 12, "bad-duration", "'2 days' is not a duration"),
    (GOOD.replace("    purpose:", "    where: \"%patient.age > 3 and %agee > 2\"\n    purpose:"), 4, 34, "unknown-variable", "%agee (did you mean %age?)"),
    (GOOD.replace("    purpose:", "    where: serviceType.memberOf('comunity-discharge')\n    purpose:"), 4, 34, "unknown-valueset",
     "did you mean 'community-discharge'"),
])
def test_each_error_kind_names_file_line_col(mdir, bad, line, col, code, words):
    errs = diag_for(mdir, bad)
    assert errs, "expected an error"
    hit = [e for e in errs if words in e]
    assert hit, errs
    assert f"zz_bad.yaml:{line}:{col}: error[{code}" in hit[0], hit[0]


def test_cli_validate_exits_1_and_prints_positions(mdir, capsys):
    (mdir / "rules" / "zz_bad.yaml").write_text(GOOD.replace("appointment.booked", "appointment.bookd"))
    assert main(["mappings", "validate", str(mdir)]) == 1
    err = capsys.readouterr().err
    assert "zz_bad.yaml:3:10: error[unknown-event]" in err and "1 error(s)" in err


def test_cli_validate_ok_on_shipped_mappings(capsys):
    assert main(["mappings", "validate", str(REPO / "mappings")]) == 0
    assert "ok:" in capsys.readouterr().out
