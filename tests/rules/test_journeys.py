"""Journeys (issue 13): compiled into step rules, validated at file:line, one exit cancels every
pending step, one dedup scope, one cap, and a timeline; overlap warnings and discriminators."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]

JOURNEY = """\
journeys:
  - id: test-journey
    purpose: care-coordination
    channel: email
    entry:
      on: [appointment.noshow]
    exit:
      - name: rebooked
        on: [appointment.booked]
        same: patient
    on_no_longer_matching: cancel
    overlap: {exclusive_with: [noshow-reengagement]}
    steps:
      - id: first
        when: {after: 1h}
        emit: {trigger: jt_first, destinations: [webhook], payload: {reminder: "'first'"}}
      - id: second
        when: {after: 2h}
        emit: {trigger: jt_second, destinations: [webhook], payload: {reminder: "'second'"}}
"""

CASES = """\
tests:
  - name: a no-show starts the journey; both steps fire; the shipped no-show rule is superseded
    now: 2024-04-02T11:00:00-04:00
    steps:
      - hl7_file: {s12}
      - hl7_file: {s26}
    exhaustive: true
    expect:
      - {{rule: test-journey.first, status: fired, due: "2024-04-02T12:00:00-04:00"}}
      - {{rule: test-journey.second, status: fired, due: "2024-04-02T13:00:00-04:00"}}
      - {{rule: noshow-reengagement, status: skipped, reason: superseded by test-journey}}
"""


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", dst, ignore=shutil.ignore_patterns("*_test.yaml"))
    return dst


def _diags(mdir: Path, text: str, level: str = "error") -> list[str]:
    (mdir / "rules" / "zz.yaml").write_text(text)
    _, diags = load_ruleset(mdir)
    return [str(d) for d in diags if d.level == level and "zz.yaml" in d.path]


def test_a_journey_compiles_into_one_rule_per_step_with_the_exits_first(mdir: Path) -> None:
    (mdir / "rules" / "zz.yaml").write_text(JOURNEY)
    rs, diags = load_ruleset(mdir)
    assert rs is not None, [str(d) for d in diags]
    steps = [cr for cr in rs.rules if cr.journey and cr.journey.journey_id == "test-journey"]
    assert [cr.id for cr in steps] == ["test-journey.first", "test-journey.second"]
    assert [cr.journey.step for cr in steps if cr.journey] == [1, 2]
    for cr in steps:
        assert cr.rule.on == ["appointment.noshow"] and cr.rule.purpose == "care-coordination"
        assert cr.rule.message_kind == "test-journey"  # one cap: the steps share the journey's kind
        assert [u.on for u in cr.rule.unless] == [["appointment.booked"]]
        assert cr.journey is not None and cr.journey.exit_name(0) == "rebooked"
    assert "noshow-reengagement" in rs.superseded_by


@pytest.mark.parametrize("bad, line, col, code, words", [
    (JOURNEY.replace("      on: [appointment.noshow]", "      on: [appointment.noshw]"), 6, 12, "unknown-event",
     "did you mean 'appointment.noshow'"),
    (JOURNEY.replace("      - id: second", "      - id: first"), 17, 9, "duplicate-step", "step id 'first' is already used"),
    (JOURNEY.replace("        when: {after: 2h}", "        wen: {after: 2h}"), 18, 9, "unknown-field", "unknown field 'wen'"),
    (JOURNEY.replace("        on: [appointment.booked]", "        on: [appointment.bookd]"), 9, 14, "unknown-event",
     "did you mean 'appointment.booked'"),
    (JOURNEY.replace("[webhook], payload: {reminder: \"'second'\"}", "[webhok]"), 19, 51, "unknown-destination",
     "did you mean 'webhook'"),
    (JOURNEY.replace("    on_no_longer_matching: cancel\n", ""), 3, 5, "reschedule-policy",
     "journey 'test-journey': purpose care-coordination is clinically required"),
    (JOURNEY.replace("exclusive_with: [noshow-reengagement]", "exclusive_with: [noshow-reengagment]"), 12, 32,
     "unknown-rule", "did you mean 'noshow-reengagement'"),
    (JOURNEY.replace("{after: 2h}", "{after: 30m}"), 17, 9, "step-order",
     "step 2 'second' is due before step 1 'first'"),
    (JOURNEY + "      - id: third\n        when: {after: 3h}\n        wait_for: {events: [appointment.booked], timeout: 2d}\n"
     "        emit: {trigger: jt3, destinations: [webhook]}\n", 20, 9, "invalid", "do not combine it with when.after"),
])
def test_journey_errors_name_file_line_col(mdir: Path, bad: str, line: int, col: int, code: str, words: str) -> None:
    errs = _diags(mdir, bad)
    hit = [e for e in errs if f"zz.yaml:{line}:{col}: error[{code}]" in e]
    assert hit and words in hit[0], errs
    assert len(hit) == 1, hit  # said once, not once per step


def test_one_exit_cancels_every_pending_step_at_once(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (mdir / "rules" / "zz.yaml").write_text(JOURNEY)
    s12, s26 = REPO / "tests/fixtures/hl7/siu_s12_v251.hl7", REPO / "tests/fixtures/hl7/siu_s26_v251.hl7"
    rebook = ("MSH|^~\\\\&|SCH|HOSPA|CARELOOP|CL|20240402113000-0400||SIU^S12^SIU_S12|JT-REBOOK|P|2.5.1\n"
              "          SCH|PL3010^CERNERSCH|FL4010^CERNERSCH||||||ROUTINE^Routine^HL70277||||||||||||||||Booked\n"
              "          TQ1|1||||||20240409091500-0400|20240409094500-0400\n"
              "          PID|1||E000777^^^EPI^PI~MRN000123^^^HOSPA^MR||TESTPATIENT^ALPHA^Q^^^^L||19800215|F\n"
              "          RGS|1")
    cases = CASES.format(s12=s12, s26=s26) + f"""
  - name: a booking after the no-show cancels both pending steps with the exit's name
    now: 2024-04-02T11:00:00-04:00
    steps:
      - hl7_file: {s12}
      - hl7_file: {s26}
      - at: 2024-04-02T11:30:00-04:00
        hl7: |
          {rebook}
    expect:
      - {{rule: test-journey.first, status: cancelled, reason: "journey test-journey exit 'rebooked'"}}
      - {{rule: test-journey.second, status: cancelled, reason: "journey test-journey exit 'rebooked'"}}
    expect_none: [test-journey.first, test-journey.second, noshow-reengagement]
"""
    (mdir / "rules" / "zz_test.yaml").write_text(cases)
    assert main(["mappings", "test", str(mdir), "-v"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "2 passed, 0 failed" in out
    # the timeline: steps with planned times, the exit
    assert "journey test-journey (entry: event 2" in out
    assert "step 1 test-journey.first: planned 2024-04-02T12:00:00-04:00 -> fired" in out
    assert "step 2 test-journey.second: planned 2024-04-02T13:00:00-04:00 -> cancelled at 2024-04-02T11:30:00-04:00" in out
    assert "exit at 2024-04-02T11:30:00-04:00: cancelled before its due time: journey test-journey exit 'rebooked'" in out


def test_a_journey_cap_counts_all_its_steps_together(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (mdir / "rules" / "zz.yaml").write_text(JOURNEY.replace("    on_no_longer_matching: cancel\n",
                                                            "    on_no_longer_matching: cancel\n    cap: {per_day: 1}\n"))
    s12, s26 = REPO / "tests/fixtures/hl7/siu_s12_v251.hl7", REPO / "tests/fixtures/hl7/siu_s26_v251.hl7"
    (mdir / "rules" / "zz_test.yaml").write_text(CASES.format(s12=s12, s26=s26).replace(
        "{rule: test-journey.second, status: fired, due: \"2024-04-02T13:00:00-04:00\"}",
        "{rule: test-journey.second, status: suppressed, reason: \"journey cap reached: 1 'test-journey' messages\"}"))
    assert main(["mappings", "test", str(mdir)]) == 0, capsys.readouterr().out


# -- overlap -------------------------------------------------------------------------

ENROLL = """\
journeys:
  - id: my-enrollment
    purpose: care-coordination
    entry: {on: [careplan.active]}
    on_no_longer_matching: cancel
    steps:
      - id: welcome
        emit: {trigger: my_welcome, destinations: [webhook], payload: {reminder: "'welcome'"}}
"""


def test_an_undeclared_overlap_is_a_warning_at_the_starters_line(mdir: Path) -> None:
    warns = _diags(mdir, ENROLL, "warning")
    hit = [w for w in warns if "warning[overlap]" in w and "'careplan-enrollment'" in w]
    assert hit and hit[0].startswith(f"{mdir}/rules/zz.yaml:2:5: warning[overlap] journey 'my-enrollment' and "
                                     "'careplan-enrollment'"), warns
    assert "both start on careplan.active with purpose care-coordination to webhook" in hit[0]
    assert "overlap: {exclusive_with: [careplan-enrollment]}" in hit[0]


def test_a_declared_overlap_is_not_warned(mdir: Path) -> None:
    for decl in ("    overlap: {exclusive_with: [careplan-enrollment]}\n",
                 "    overlap: {with: [careplan-enrollment], discriminator: trigger}\n"):
        warns = _diags(mdir, ENROLL.replace("    on_no_longer_matching: cancel\n",
                                            "    on_no_longer_matching: cancel\n" + decl), "warning")
        assert not [w for w in warns if "[overlap]" in w and "'careplan-enrollment'" in w], warns
    # the shipped library declares all of its own overlaps
    _, diags = load_ruleset(REPO / "mappings")
    assert not [str(d) for d in diags if d.code == "overlap"]


def test_a_discriminator_that_does_not_separate_is_an_error(mdir: Path) -> None:
    same_trigger = ENROLL.replace("my_welcome", "careplan_enrollment").replace(
        "    on_no_longer_matching: cancel\n",
        "    on_no_longer_matching: cancel\n    overlap: {with: [careplan-enrollment], discriminator: trigger}\n")
    errs = _diags(mdir, same_trigger)
    assert any("zz.yaml:6:44: error[overlap-discriminator] discriminator 'trigger' does not separate 'my-enrollment' "
               "from 'careplan-enrollment': both emit trigger 'careplan_enrollment'" in e for e in errs), errs
    by_payload = ENROLL.replace("    on_no_longer_matching: cancel\n",
                                "    on_no_longer_matching: cancel\n    overlap: {with: [careplan-enrollment], discriminator: reminder}\n")
    errs = _diags(mdir, by_payload)
    assert any("payload field 'reminder' must be a quoted constant in every trigger of both" in e for e in errs), errs
    errs = _diags(mdir, ENROLL.replace("    on_no_longer_matching: cancel\n",
                                       "    on_no_longer_matching: cancel\n    overlap: {with: [careplan-enrollment]}\n"))
    assert any("overlap.with needs a discriminator" in e for e in errs), errs


def test_the_golden_runner_flags_a_sample_on_which_both_fired(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (mdir / "rules" / "zz.yaml").write_text(ENROLL)
    path = mdir / "rules" / "zz_test.yaml"
    path.write_text("""\
tests:
  - name: both enrollments fire for one plan
    now: 2024-05-01T09:00:00-04:00
    steps:
      - fhir: {resourceType: CarePlan, id: cp-9, status: active, intent: plan, subject: {reference: Patient/pt-9}}
    expect:
      - {rule: my-enrollment.welcome, status: fired}
      - {rule: careplan-enrollment, status: fired}
""")
    assert main(["mappings", "test", str(mdir)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: overlap: 'careplan-enrollment' and 'my-enrollment' both fired on event 1 (no overlap declared" in out
    # declared exclusive: only the journey fires, and the case passes
    (mdir / "rules" / "zz.yaml").write_text(ENROLL.replace(
        "    on_no_longer_matching: cancel\n",
        "    on_no_longer_matching: cancel\n    overlap: {exclusive_with: [careplan-enrollment]}\n"))
    path.write_text(path.read_text().replace("{rule: careplan-enrollment, status: fired}",
                                             "{rule: careplan-enrollment, status: skipped, reason: superseded by my-enrollment}"))
    assert main(["mappings", "test", str(mdir)]) == 0, capsys.readouterr().out
