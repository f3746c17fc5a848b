"""explain: a false `where` clause by clause with the %variables it used; per destination, the body after policy."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.rules.clauses import split_clauses

REPO = Path(__file__).resolve().parents[2]
A03 = str(REPO / "tests/fixtures/hl7/adt_a03_v23.hl7")  # inpatient discharge home, DG1 R07.9 + I10 (no FUH diagnosis)
NOW = "2024-03-10T16:00:00-04:00"


def test_split_top_level_clauses_only():
    assert split_clauses("a = 1 and (b or c) and d.where(e and f).exists()") == (
        "and", ["a = 1", "(b or c)", "d.where(e and f).exists()"])
    assert split_clauses("(x or y or z)") == ("or", ["x", "y", "z"])
    assert split_clauses("a and b or c") == ("or", ["a and b", "c"])
    assert split_clauses("a xor b") == (None, ["a xor b"])
    assert split_clauses("start.exists()") == (None, ["start.exists()"])


def test_false_where_shows_each_clause_and_variable_values(capsys):
    assert main(["explain", A03, "--now", NOW]) == 0
    out = capsys.readouterr().out
    block = out[out.index("[no] fuh-followup-7d"):out.index("[no] fuh-followup-30d")]
    assert "- clauses joined by 'and':" in block
    assert "-   [true ] class.code = 'IMP'" in block
    assert "-   [true ] %age >= 6    (%age = 44)" in block
    assert ("-   [false] %diagnoses.memberOf('fuh-mental-illness')    (%diagnoses = [http://hl7.org/fhir/sid/icd-10-cm|R07.9, "
            "http://hl7.org/fhir/sid/icd-10-cm|I10])") in block
    assert "-   [true ] hospitalization.dischargeDisposition.where(memberOf('fuh-excluded-discharge')).empty()" in block


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", dst, ignore=shutil.ignore_patterns("*_test.yaml"))
    (dst / "rules" / "zz.yaml").write_text("""\
rules:
  - id: zz-discharge
    on: [encounter.finished]
    where: class.code = 'IMP'
    purpose: care-coordination
    on_no_longer_matching: cancel
    emit:
      trigger: zz_discharge
      destinations: [webhook]
      payload: {discharge_date: period.end, mrn: identifier.value.first(), diagnosis: "%diagnoses.coding.code.first()"}
""")
    return dst


def test_explain_json_shows_the_body_after_policy(mdir, capsys):
    assert main(["explain", A03, "--now", NOW, "--json", "--mappings", str(mdir)]) == 0
    doc = json.loads(capsys.readouterr().out)
    rule = next(r for r in doc["events"][0]["rules"] if r["rule"] == "zz-discharge")
    assert rule["payload"]["mrn"] and rule["payload"]["diagnosis"] == "R07.9"  # the trigger keeps them
    sent = rule["destinations"]["webhook"]
    assert sent["stripped"] == ["diagnosis", "mrn"]
    data = sent["body"]["data"]
    assert sent["body"]["type"] == "zz_discharge"
    assert data["discharge_date"] == "2024-03-10T15:00:00-04:00" and data["purpose"] == "care-coordination"
    assert "mrn" not in data and "diagnosis" not in data
    assert data["contact_key"].startswith("ck_")


def test_explain_text_says_what_each_destination_receives(mdir, capsys):
    assert main(["explain", A03, "--now", NOW, "--mappings", str(mdir)]) == 0
    out = capsys.readouterr().out
    block = out[out.index("[FIRES] zz-discharge"):]
    assert '> webhook receives (webhook body after policy): {"type":"zz_discharge"' in block
    assert '"discharge_date":"2024-03-10T15:00:00-04:00"' in block.splitlines()[3]
    assert "stripped by its policy: diagnosis, mrn" in block
