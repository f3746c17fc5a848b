"""The golden runner: a failing case reports the case's and the expectation's file:line."""
from __future__ import annotations

import shutil
from pathlib import Path

from middleware.cli import main

REPO = Path(__file__).resolve().parents[2]

CASE = """\
tests:
  - name: reminder due time
    now: 2024-03-01T09:00:00-05:00
    steps:
      - hl7_file: {fixture}
    expect:
      - rule: appointment-reminder-24h
        status: fired
        due: "2024-03-10T15:00:00-04:00"
    expect_none: [appointment-reminder-72h]
"""


def test_failing_case_reports_file_line_and_diff(tmp_path: Path, capsys):
    m = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", m, ignore=shutil.ignore_patterns("*_test.yaml"))
    fixture = REPO / "tests/fixtures/hl7/siu_s12_v23.hl7"
    path = m / "rules" / "appointments_test.yaml"
    path.write_text(CASE.format(fixture=fixture))
    assert main(["mappings", "test", str(m)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {path}:2: reminder due time" in out
    assert f"{path}:7: expected trigger not found" in out  # the expectation's line
    assert "- expected: rule=appointment-reminder-24h status=fired due=2024-03-10 15:00:00-04:00" in out
    assert "+ actual:   #" in out and "due 2024-03-10T18:00:00+00:00 != 2024-03-10T19:00:00+00:00" in out
    assert f"{path}:10: rule 'appointment-reminder-72h' must not fire" in out
    assert "0 passed, 1 failed" in out


def test_malformed_test_file_is_a_positioned_error(tmp_path: Path, capsys):
    m = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", m, ignore=shutil.ignore_patterns("*_test.yaml"))
    path = m / "rules" / "x_test.yaml"
    path.write_text("tests:\n  - name: x\n    now: 2024-03-01T09:00:00Z\n    stepz: []\n")
    assert main(["mappings", "test", str(m)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:4:5: error[unknown-field] unknown field 'stepz' (did you mean 'steps'?)" in err
