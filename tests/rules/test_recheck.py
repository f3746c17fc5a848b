"""Reschedules (issue 13): a change that makes a pending trigger's rule false on complete data
cancels it (``on_no_longer_matching: cancel``) or keeps it (``keep``); a change that cannot be
evaluated (a partial update) keeps it and flags it, never cancels; a flagged marketing trigger
is not sent. Also the golden steps that record and revoke authorizations and opt-outs."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.rules.recheck import elements

REPO = Path(__file__).resolve().parents[2]

RULES = """\
valuesets:
  colonoscopy: ["45378"]
rules:
  - id: colonoscopy-prep
    on: [appointment.booked, appointment.rescheduled]
    where: serviceType.memberOf('colonoscopy')
    when: {at: start, offset: -5bd}
    purpose: treatment-reminder
    channel: email
    on_no_longer_matching: cancel
    overlap: {with: [appointment-reminder-72h, appointment-reminder-24h], discriminator: trigger}
    emit: {trigger: colonoscopy_prep, destinations: [webhook], payload: {appointment_start: start}}
  - id: colonoscopy-offer
    on: [appointment.booked, appointment.rescheduled]
    where: serviceType.memberOf('colonoscopy')
    when: {at: start, offset: -2d}
    purpose: marketing
    channel: email
    emit: {trigger: colonoscopy_offer, destinations: [webhook]}
"""


def siu(ctl: str, start: str, ais: str | None = "45378^Colonoscopy^C4", at: str = "20250701090000-0400") -> str:
    seg = [f"MSH|^~\\&|SCH|HOSPA|CARELOOP|CL|{at}||SIU^S12^SIU_S12|{ctl}|P|2.5.1",
           "SCH|C1^SCH|C1^SCH||||||ROUTINE^Routine^HL70277||||||||||||||||Booked",
           f"TQ1|1||||||{start}|{start}",
           "PID|1||MRN400^^^HOSPA^MR||TEST^COLON||19600101|F",
           "RGS|1"] + ([f"AIS|1||{ais}"] if ais else [])
    return "\n".join("          " + s for s in seg)


def step(msg: str, at: str | None = None) -> str:
    return (f"      - at: {at}\n        hl7: |\n" if at else "      - hl7: |\n") + msg + "\n"


BOOK = step(siu("RC-1", "20250725090000-0400"))
OTHER_SERVICE = step(siu("RC-2", "20250728090000-0400", "99213^Office visit^C4", "20250702090000-0400"),
                     "2025-07-02T09:00:00-04:00")
PARTIAL = step(siu("RC-3", "20250728090000-0400", None, "20250702090000-0400"), "2025-07-02T09:00:00-04:00")
COMPLETE_AGAIN = step(siu("RC-4", "20250728090000-0400", at="20250703090000-0400"), "2025-07-03T09:00:00-04:00")


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    # the shipped colonoscopy example would overlap this test's own colonoscopy rule
    shutil.copytree(REPO / "mappings", dst, ignore=shutil.ignore_patterns("*_test.yaml", "colonoscopy*.yaml"))
    (dst / "rules" / "zz.yaml").write_text(RULES)
    return dst


def run(mdir: Path, cases: str, capsys: pytest.CaptureFixture[str]) -> str:
    (mdir / "rules" / "zz_test.yaml").write_text("tests:\n" + cases)
    rc = main(["mappings", "test", str(mdir), "-v"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


def test_a_reschedule_to_another_service_cancels_the_pending_trigger(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(mdir, f"""\
  - name: moved to an office visit
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}{OTHER_SERVICE}    expect:
      - rule: colonoscopy-prep
        status: cancelled
        reason: "cancelled: no longer matches after appointment.rescheduled (event 2): where is false: serviceType.memberOf('colonoscopy')"
    expect_none: [colonoscopy-prep]
""", capsys)


def test_keep_leaves_the_trigger_as_scheduled(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = mdir / "rules" / "zz.yaml"
    rules.write_text(rules.read_text().replace("on_no_longer_matching: cancel", "on_no_longer_matching: keep"))
    run(mdir, f"""\
  - name: kept
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}{OTHER_SERVICE}    expect:
      - {{rule: colonoscopy-prep, status: fired, due: "2025-07-18T09:00:00-04:00", flagged: false}}
""", capsys)


def test_a_partial_update_keeps_and_flags_and_a_complete_one_clears_the_flag(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(mdir, f"""\
  - name: partial update (no AIS) - kept and flagged, never cancelled
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}{PARTIAL}    expect:
      - {{rule: colonoscopy-prep, status: fired, due: "2025-07-18T09:00:00-04:00", flagged: true}}
  - name: a complete update that matches again clears the flag
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}{PARTIAL}{COMPLETE_AGAIN}    expect:
      - {{rule: colonoscopy-prep, status: fired, flagged: false}}
""", capsys)


def test_an_adt_a08_without_status_is_partial_and_a_complete_one_cancels(capsys: pytest.CaptureFixture[str],
                                                                       mdir: Path) -> None:
    a03 = ("MSH|^~\\&|ADT|HOSPA|CARELOOP|CL|20241108140000-0500||ADT^A03^ADT_A03|RC-A03|P|2.5.1\n"
           "          EVN||20241108140000-0500\n"
           "          PID|1||MRN500^^^HOSPA^MR||TEST^DISCHARGE||19500101|M\n"
           "          PV1|1|I|4W^410^A^HOSPA|E|||||||||||||||V500^^^HOSPA^VN|||||||||||||||||{disp}||||||||"
           "20241105090000-0500|{end}")
    discharge = "      - hl7: |\n          " + a03.format(disp="01", end="20241108140000-0500") + "\n"
    a08_partial = ("      - at: 2024-11-09T09:00:00-05:00\n        hl7: |\n          "
                   + a03.replace("ADT^A03^ADT_A03|RC-A03", "ADT^A08^ADT_A01|RC-A08P").format(disp="", end="") + "\n")
    a08_expired = ("      - at: 2024-11-09T09:00:00-05:00\n        hl7: |\n          "
                   + a03.replace("ADT^A03^ADT_A03|RC-A03", "ADT^A08^ADT_A01|RC-A08X").format(
                       disp="20", end="20241108140000-0500") + "\n")
    run(mdir, f"""\
  - name: an A08 without PV1-45 (a partial update) keeps and flags the TCM outreach
    now: 2024-11-08T14:00:00-05:00
    steps:
{discharge}{a08_partial}    expect:
      - {{rule: tcm-visit-7d, status: fired, due: "2024-11-14T10:00:00-05:00", flagged: true}}  # the first 10:00 after the wait
      - {{rule: tcm-visit-14d, status: fired, flagged: true}}
  - name: an A08 correcting the disposition to expired cancels the TCM outreach with the reason
    now: 2024-11-08T14:00:00-05:00
    steps:
{discharge}{a08_expired}    expect:
      - {{rule: tcm-visit-7d, status: cancelled, reason: "no longer matches after encounter.updated"}}
      - {{rule: tcm-visit-14d, status: cancelled, reason: "where is false: class.code = 'IMP'"}}
    expect_none: [tcm-visit-7d, tcm-visit-14d]
""", capsys)


def test_marketing_path_with_recorded_and_revoked_authorizations(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(mdir, f"""\
  - name: no authorization - the marketing offer is suppressed at its due time
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}    expect:
      - {{rule: colonoscopy-offer, status: suppressed, reason: marketing requires a recorded authorization}}
  - name: an authorization recorded before the due time lets it go
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}      - advance: 1d
        authorize: {{reference: web-form-42}}
    expect:
      - {{rule: colonoscopy-offer, status: fired, due: "2025-07-23T09:00:00-04:00"}}
  - name: an authorization revoked before the due time stops it
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}      - authorize: {{}}
      - at: 2025-07-20T09:00:00-04:00
        revoke: authorization
    expect:
      - {{rule: colonoscopy-offer, status: suppressed, reason: marketing requires a recorded authorization}}
  - name: an opt-out stops the treatment reminder; lifting it lets the marketing offer go
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}      - authorize: {{}}
      - opt_out: {{reason: STOP reply, source: sms-stop}}
      - at: 2025-07-19T09:00:00-04:00
        revoke: opt_out
    expect:
      - {{rule: colonoscopy-prep, status: suppressed, reason: "patient opted out: STOP reply"}}
      - {{rule: colonoscopy-offer, status: fired}}
  - name: a FHIR Consent denying marketing suppresses only the offer
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}      - authorize: {{}}
      - consent:
          resourceType: Consent
          id: c-1
          status: active
          provision: {{type: deny, purpose: [{{system: http://terminology.hl7.org/CodeSystem/v3-ActReason, code: HMARKT}}]}}
    expect:
      - {{rule: colonoscopy-prep, status: fired}}
      - {{rule: colonoscopy-offer, status: suppressed, reason: "consent c-1: deny provision for purpose marketing"}}
  - name: a flagged marketing trigger is not sent (marketing may be dropped on missing data)
    now: 2025-07-01T09:00:00-04:00
    steps:
{BOOK}      - authorize: {{}}
{PARTIAL}    expect:
      - {{rule: colonoscopy-prep, status: fired, flagged: true}}
      - {{rule: colonoscopy-offer, status: suppressed, reason: not sent on data that could not be re-checked, flagged: true}}
""", capsys)
    assert "authorization for marketing recorded (step 2)" in out and "authorization revoked (step 3)" in out


def test_a_privacy_step_without_a_patient_is_a_positioned_failure(mdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = mdir / "rules" / "zz_test.yaml"
    path.write_text("tests:\n  - name: x\n    now: 2025-07-01T09:00:00-04:00\n    steps:\n      - authorize: {}\n"
                    "      - revoke: opt_out\n        patient: HOSPA|MR|nobody\n")
    assert main(["mappings", "test", str(mdir)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:5: step 1: no patient for authorization" in out
    assert f"{path}:6: step 2: revoke opt_out: the patient has no active opt_out" in out


def test_elements_read_by_a_condition() -> None:
    assert elements("class.code = 'IMP' and hospitalization.dischargeDisposition.memberOf('x')") == {"class", "hospitalization"}
    assert elements("serviceType.memberOf('colonoscopy') and %age >= 6 and start.exists()") == {"serviceType", "start"}


def test_an_id_only_notification_flags_until_the_read_arrives(mdir: Path) -> None:
    from datetime import datetime, timezone

    import orjson
    from middleware.storage.sql import unit

    from middleware.pipeline.changes import UNREAD, clear_unread, flag_unread
    from middleware.pipeline.dryrun import DryRun
    from middleware.rules.load import load_ruleset

    rs, diags = load_ruleset(mdir)
    assert rs is not None, [str(d) for d in diags]
    now = datetime(2025, 7, 1, 13, tzinfo=timezone.utc)
    appt = {"resourceType": "Appointment", "id": "c9", "status": "booked", "start": "2025-07-25T09:00:00-04:00",
            "meta": {"versionId": "1", "lastUpdated": "2025-07-01T09:00:00-04:00"},
            "serviceType": [{"coding": [{"code": "45378"}]}], "participant": [{"actor": {"reference": "Patient/p9"}}]}
    dry = DryRun(rs, now)
    try:
        dry.feed(orjson.dumps(appt), "v1")
        [prep] = [t for t in dry.triggers() if t.rule_id == "colonoscopy-prep"]
        assert prep.status == "pending" and prep.flag is None
        with unit(dry.engine, write=True) as s:
            assert flag_unread(s, "Appointment/c9", rs, now) == 4
            s.commit()
        assert {t.rule_id for t in dry.triggers() if t.flag == UNREAD} == {
            "colonoscopy-prep", "colonoscopy-offer", "appointment-reminder-72h", "appointment-reminder-24h"}
        with unit(dry.engine, write=True) as s:  # the read shows nothing newer: the flag goes
            clear_unread(s, "Appointment/c9", now)
            s.commit()
        assert {t.flag for t in dry.triggers() if t.rule_id.startswith("colonoscopy")} == {None}
        with unit(dry.engine, write=True) as s:
            flag_unread(s, "Appointment/c9", rs, now)
            s.commit()
        # the read arrives: another service, complete data -> cancelled, not left flagged
        v2 = dict(appt, meta={"versionId": "2", "lastUpdated": "2025-07-02T09:00:00-04:00"},
                  serviceType=[{"coding": [{"code": "99213"}]}])
        dry.feed(orjson.dumps(v2), "v2")
        got = {t.rule_id: (t.status, t.reason or "") for t in dry.triggers() if t.rule_id.startswith("colonoscopy")}
        assert got["colonoscopy-prep"][0] == "cancelled" and "no longer matches" in got["colonoscopy-prep"][1]
        assert got["colonoscopy-offer"][0] == "cancelled"
    finally:
        dry.close()
