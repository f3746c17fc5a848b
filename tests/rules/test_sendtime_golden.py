"""Send times end to end: golden cases across daylight saving (tests/fixtures/sendtimes),
and the loader's diagnostics for a wrong time of day and a send time inside quiet hours."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "sendtimes"


@pytest.fixture
def sendtime_mappings(mappings_dir: Path) -> Path:
    for f in (mappings_dir / "rules").glob("*.yaml"):
        f.unlink()
    for f in FIXTURE.glob("*.yaml"):
        shutil.copy(f, mappings_dir / "rules" / f.name)
    return mappings_dir


def test_golden_cases_across_dst_pass(sendtime_mappings, capsys):
    rc = main(["mappings", "test", str(sendtime_mappings)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "3 passed, 0 failed" in out


def test_golden_case_fails_when_the_expected_time_is_wrong(sendtime_mappings, capsys):
    t = sendtime_mappings / "rules" / "sendtimes_test.yaml"
    t.write_text(t.read_text().replace('due: "2024-03-10T03:30:00-04:00"', 'due: "2024-03-10T02:30:00-04:00"'))  # 06:30Z, an hour early
    assert main(["mappings", "test", str(sendtime_mappings)]) == 1
    out = capsys.readouterr().out
    assert "sendtimes_test.yaml:" in out and "2024-03-10T07:30:00+00:00" in out


def test_send_time_inside_quiet_hours_is_a_warning(sendtime_mappings):
    rs, diags = load_ruleset(sendtime_mappings)
    assert rs is not None
    [w] = [d for d in diags if d.code == "send-time-in-quiet-hours"]
    assert w.level == "warning" and w.path.endswith("sendtimes.yaml") and w.line == 42  # the at_time line of early-sms
    assert "07:00 is inside quiet hours 21:00-08:00" in w.message


RULE = """\
rules:
  - id: r1
    on: [appointment.booked]
    when: {{at: start, offset: -1d, at_time: {value}}}
    purpose: treatment-reminder
    on_no_longer_matching: cancel
    emit: {{trigger: t1, destinations: [webhook]}}
"""


@pytest.mark.parametrize("value", ['"T9:00"', '"25:00"', "9am", '"10:75"', "'10'"])
def test_wrong_time_of_day_is_an_error_at_file_line_with_the_right_form(mappings_dir, value, capsys):
    (mappings_dir / "rules" / "zz.yaml").write_text(RULE.format(value=value))
    assert main(["mappings", "validate", str(mappings_dir)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"{mappings_dir / 'rules' / 'zz.yaml'}:4:" in text and "error[bad-time]" in text
    assert 'at_time: "10:00" (24-hour HH:MM, quoted)' in text
    assert "Traceback" not in text


def test_unquoted_yaml_time_is_read_as_that_time(mappings_dir):
    (mappings_dir / "rules" / "zz.yaml").write_text(RULE.format(value="10:00"))
    rs, diags = load_ruleset(mappings_dir)
    assert rs is not None, [str(d) for d in diags]
    assert rs.rule("r1").rule.when.at_time == "10:00"


def test_unknown_holiday_calendar_is_an_error(mappings_dir):
    p = mappings_dir / "settings.yaml"
    p.write_text(p.read_text().replace("holiday_calendar: US", "holiday_calendar: XX-moon"))
    rs, diags = load_ruleset(mappings_dir)
    assert rs is None
    [e] = [d for d in diags if d.code == "unknown-calendar"]
    assert e.path.endswith("settings.yaml") and "use US (U.S. federal holidays)" in e.message


def test_sandbox_demo_copy_drops_send_times_and_still_validates(tmp_path):
    """The sandbox's seconds-long demo waits would otherwise be moved to the next 10:00."""
    from middleware.sandbox.demo_mappings import prepare

    changes = prepare(REPO / "mappings", tmp_path / "demo", sink_url=None, fhir_base=None)
    dropped = {(c.where, c.what, c.real) for c in changes if c.what.startswith("when.")}
    assert ("tcm-visit-7d", "when.at_time", "10:00") in dropped
    assert ("colonoscopy-prep-5bd", "when.at_time", "09:00") in dropped
    assert not [p for p in (tmp_path / "demo" / "rules").glob("*.yaml")
                if not p.name.endswith("_test.yaml") and "at_time" in p.read_text()]
    rs, diags = load_ruleset(tmp_path / "demo")
    assert rs is not None, [str(d) for d in diags]
    assert rs.rule("tcm-visit-7d").rule.when.at_time is None
    assert rs.rule("colonoscopy-prep-5bd").rule.when.offset == "-5bd"
