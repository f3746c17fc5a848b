"""The patient timeline (``/patients``, ``GET /api/patients/{pt_id}/timeline``) through the real app and
the real pipeline, on SQLite and PostgreSQL: a booked-then-cancelled appointment shows its triggers
cancelled with the reason; a merged patient's timeline holds the retired patient's history; a reveal
is refused (and the attempt audited) without the ``reveal`` permission, needs a reason, and is audited; no MRN, name or birth
date appears on any page (or in any URL) unless revealed."""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from middleware.config.policy import contact_key
from middleware.keyring import contact_keyring
from middleware.service import Runtime
from middleware.storage.inbox import InboundRecord
from middleware.storage.queries import admin_audit as aq
from middleware.storage.sql import unit
from tests.support.console import client, console_runtime, sign_in, write_users
from tests.support.hl7msgs import adt, siu

TOKEN = "synthetic-test-token-0123456789abcdef"
START = datetime.now(timezone.utc) + timedelta(days=5)
PT = re.compile(r"/patients/(pt_[a-z2-7]{26})")
#: what must never be on a page unless revealed (synthetic values of tests/support/hl7msgs.py)
IDENTIFYING = ("MRN830001", "MRN830002", "MRN840001", "TESTPATIENT", "BRAVO", "CHARLIE", "19700101", "1970-01-01",
               "999-00-1234", "5550142")


@pytest.fixture
def rt(db_url: str, mappings_dir: Path, tmp_path: Path) -> Runtime:
    return console_runtime(db_url, mappings_dir, write_users(tmp_path / "users.yaml"), api_token=TOKEN)


def ingest(rt: Runtime, *messages: bytes) -> None:
    rt.writer.write_batch([InboundRecord(source="default", channel="mllp", raw=m, status="received",
                                         sha256=hashlib.sha256(m).hexdigest()) for m in messages])
    rt.processor.drain()


def booked_then_cancelled(rt: Runtime, mrn: str = "MRN830001", appt: str = "X1") -> None:
    ingest(rt, siu("S12", control=f"{appt}-B", mrn=mrn, appt=appt, start=START))
    ingest(rt, siu("S15", control=f"{appt}-C", mrn=mrn, appt=appt, start=START, status="Cancelled"))


def find(c: TestClient, csrf: str, mrn: str) -> str:
    """Find by MRN (a POST); the redirect names the internal id and never the MRN."""
    r = c.post("/patients/find", data={"csrf": csrf, "mrn": mrn})
    assert r.status_code == 303, r.text
    assert mrn not in r.headers["location"]
    m = PT.fullmatch(r.headers["location"])
    assert m, r.headers["location"]
    return m.group(1)


def assert_pseudonymous(text: str) -> None:
    leaked = [x for x in IDENTIFYING if x in text]
    assert not leaked, leaked


def api(c: TestClient, path: str) -> Any:
    r = c.get(path, headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    return r.json()


def audit_rows(rt: Runtime) -> list[aq.AdminAuditRecord]:
    with unit(rt.engine) as u:
        return list(aq.page(u, limit=50, action="console.reveal", actor=None, since=None, before_id=None))


def test_cancelled_appointment_shows_its_triggers_cancelled_with_the_reason(rt: Runtime) -> None:
    booked_then_cancelled(rt)
    c = client(rt)
    csrf = sign_in(c, "ana")
    pid = find(c, csrf, "MRN830001")
    page = c.get(f"/patients/{pid}")
    assert page.status_code == 200
    html = page.text
    assert_pseudonymous(html)
    tl = api(c, f"/api/patients/{pid}/timeline")
    assert tl["patient_id"] == pid and tl["next_cursor"] is None
    kinds = [e["kind"] for e in tl["entries"]]
    assert kinds.count("message") == 2 and kinds.count("event") == 2
    # in time order, and every event comes after its message
    assert [e["ts"] for e in tl["entries"]] == sorted(e["ts"] for e in tl["entries"])
    events = {e["status"]: e for e in tl["entries"] if e["kind"] == "event"}
    assert set(events) == {"booked", "cancelled"}
    reminders = [e for e in tl["entries"] if e["kind"] == "trigger" and "appointment-reminder" in e["summary"]]
    assert reminders and all(e["status"] == "cancelled" and e["why"] == "cancelled" for e in reminders)
    assert all("appointment.cancelled" in e["reason"] and f"event {events['cancelled']['id']}" in e["reason"]
               for e in reminders)
    assert all(e["parent"] == f"event:{events['booked']['id']}" for e in reminders)
    outcomes = [e for e in tl["entries"] if e["kind"] == "outcome"]
    assert outcomes and all(e["arm"] and e["outcome"] for e in outcomes)
    # the page shows the same entries, the reason beside each cancelled trigger, links to the messages
    for e in reminders:
        row = re.search(rf'<tr id="trigger-{e["id"]}".*?</tr>', html, re.S)
        assert row and "cancelled" in row.group(0) and "appointment.cancelled" in row.group(0)
    for e in tl["entries"]:
        if e["kind"] == "message":
            assert f'href="/messages/{e["id"]}"' in html
    assert "MRN and name hidden" in html and "Reveal identifiers" not in html  # an analyst cannot reveal
    assert_pseudonymous(str(tl))


def test_mrn_search_is_a_post_and_ids_and_contact_keys_are_gets(rt: Runtime) -> None:
    booked_then_cancelled(rt)
    c = client(rt)
    csrf = sign_in(c, "otto")
    pid = find(c, csrf, "MRN830001")
    assert find(c, csrf, "MRN830001") == pid
    # an explicit authority or system finds the same patient; a wrong one finds nobody
    r = c.post("/patients/find", data={"csrf": csrf, "mrn": "MRN830001", "authority": "HOSP"})
    assert r.status_code == 303 and r.headers["location"] == f"/patients/{pid}"
    r = c.post("/patients/find", data={"csrf": csrf, "mrn": "MRN830001", "authority": "OTHER"})
    assert r.status_code == 404 and "No patient has this MRN" in r.text
    assert_pseudonymous(r.text)
    assert c.post("/patients/find", data={"mrn": "MRN830001"}).status_code == 403  # CSRF
    r = c.post("/patients/find", data={"csrf": csrf, "mrn": "MRN830001" * 20})  # too long: refused, never echoed
    assert r.status_code == 404 and "MRN830001" not in r.text
    # the GET search takes pseudonyms only: an MRN typed there is refused and not echoed
    r = c.get("/patients", params={"q": "MRN830001"})
    assert r.status_code == 400
    assert_pseudonymous(r.text)
    r = c.get("/patients", params={"q": pid})
    assert r.status_code == 303 and r.headers["location"] == f"/patients/{pid}"
    key = api(c, f"/api/patients/{pid}/timeline")  # noqa: F841  (token-authenticated read works)
    with unit(rt.engine) as u:
        from middleware.storage.queries import timeline as tq
        (patient_key,) = tq.keys_of(u, pid)
    ck = contact_key(contact_keyring(rt.settings).current.secret, patient_key)
    r = c.get("/patients", params={"q": ck})
    assert r.status_code == 303 and r.headers["location"] == f"/patients/{pid}"
    r = c.get("/patients", params={"q": "ck_" + "0" * 40})
    assert r.status_code == 404 and "No patient" in r.text
    # the recently active list names the patient by internal id only
    r = c.get("/patients")
    assert r.status_code == 200 and f'href="/patients/{pid}"' in r.text
    assert_pseudonymous(r.text)
    assert api(c, "/api/patients")["items"][0]["patient_id"] == pid  # the same list on the API
    # an identifier typed into a timeline URL is not echoed back
    r = c.get("/patients/MRN830001")
    assert r.status_code == 404
    assert_pseudonymous(r.text)


def test_merged_patients_timeline_holds_the_retired_patients_history(rt: Runtime) -> None:
    ingest(rt, siu("S12", control="M1", mrn="MRN840001", appt="Y1", start=START))
    booked_then_cancelled(rt, mrn="MRN830002", appt="Y2")
    c = client(rt)
    csrf = sign_in(c, "aud")
    survivor, retired = find(c, csrf, "MRN840001"), find(c, csrf, "MRN830002")
    assert survivor != retired
    before = api(c, f"/api/patients/{retired}/timeline")
    retired_events = {e["id"] for e in before["entries"] if e["kind"] == "event"}
    retired_triggers = {e["id"] for e in before["entries"] if e["kind"] == "trigger"}
    retired_outcomes = {e["id"] for e in before["entries"] if e["kind"] == "outcome"}
    assert retired_events and retired_triggers and retired_outcomes

    ingest(rt, adt("A40", control="M3", mrn="MRN840001", prior_mrn="MRN830002"))
    tl = api(c, f"/api/patients/{survivor}/timeline")
    assert [m["id"] for m in tl["merged_ids"]] == [retired]
    have = {(e["kind"], e["id"]) for e in tl["entries"]}
    assert {("event", i) for i in retired_events} <= have
    assert {("trigger", i) for i in retired_triggers} <= have
    assert {("outcome", i) for i in retired_outcomes} <= have
    assert ("merge", retired) in have
    assert any(e["kind"] == "event" and e["summary"].startswith("patient.merged") for e in tl["entries"])
    # the retired id resolves to the survivor (API: same timeline; console: a redirect)
    again = api(c, f"/api/patients/{retired}/timeline")
    assert again["patient_id"] == survivor and again["requested_id"] == retired
    assert again["entries"] == tl["entries"]
    r = c.get(f"/patients/{retired}")
    assert r.status_code == 303 and r.headers["location"] == f"/patients/{survivor}"
    page = c.get(f"/patients/{survivor}")
    assert page.status_code == 200 and retired in page.text
    assert_pseudonymous(page.text)
    # the MRN of the retired patient finds the survivor
    assert find(c, csrf, "MRN830002") == survivor


def test_reveal_is_refused_without_the_permission(rt: Runtime) -> None:
    booked_then_cancelled(rt)
    c = client(rt)
    csrf = sign_in(c, "ana")
    pid = find(c, csrf, "MRN830001")
    r = c.post(f"/patients/{pid}/reveal", data={"csrf": csrf, "reason": "checking a complaint about reminders"})
    assert r.status_code == 403 and "reveal" in r.text and "auditor" in r.text
    assert_pseudonymous(r.text)
    # the attempt is in the audit, refused; nothing was revealed
    assert [(x.actor, x.role, x.action, x.target_kind, x.target_id, x.outcome) for x in audit_rows(rt)] == [
        ("ana", "analyst", "console.reveal", "patient", pid, "refused")]
    assert c.post(f"/patients/{pid}/reveal", data={"reason": "no token"}).status_code == 403  # CSRF before all
    assert len(audit_rows(rt)) == 1


def test_auditor_reveals_with_a_reason_and_the_reveal_is_audited(rt: Runtime) -> None:
    booked_then_cancelled(rt)
    c = client(rt)
    csrf = sign_in(c, "aud")
    pid = find(c, csrf, "MRN830001")
    page = c.get(f"/patients/{pid}")
    assert "Reveal identifiers" in page.text
    assert_pseudonymous(page.text)
    # no reason (or a blank one): refused, nothing shown, nothing audited; no CSRF token: refused
    for reason in ("", "   "):
        r = c.post(f"/patients/{pid}/reveal", data={"csrf": csrf, "reason": reason})
        assert r.status_code == 400 and "needs a reason" in r.text
        assert_pseudonymous(r.text)
    assert c.post(f"/patients/{pid}/reveal", data={"reason": "patient asked for a copy"}).status_code == 403
    r = c.post(f"/patients/{pid}/reveal", data={"csrf": csrf, "reason": "x" * 201})
    assert r.status_code == 400 and "under 200 characters" in r.text
    assert_pseudonymous(r.text)
    assert audit_rows(rt) == []

    r = c.post(f"/patients/{pid}/reveal", data={"csrf": csrf, "reason": "patient  asked which reminders were sent"})
    assert r.status_code == 200
    assert "MRN830001" in r.text and "HOSP" in r.text and "BRAVO TESTPATIENT" in r.text
    assert "999-00-1234" not in r.text and "19700101" not in r.text  # MRNs and names only
    (row,) = audit_rows(rt)
    assert (row.actor, row.role, row.channel, row.action, row.target_kind, row.target_id, row.reason, row.outcome) == (
        "aud", "auditor", "console", "console.reveal", "patient", pid, "patient asked which reminders were sent", "ok")
    assert "MRN830001" not in str(row)
    # for that response only: the next page load is pseudonymous again
    assert_pseudonymous(c.get(f"/patients/{pid}").text)
    # an auditor sees it in the admin audit through the API
    items = api(c, "/api/admin-audit?action=console.reveal")["items"]
    assert [(i["actor"], i["target_id"], i["reason"]) for i in items] == [
        ("aud", pid, "patient asked which reminders were sent")]


def test_timeline_api_pages_and_refusals(rt: Runtime) -> None:
    booked_then_cancelled(rt)
    c = client(rt)
    csrf = sign_in(c, "ana")
    pid = find(c, csrf, "MRN830001")
    full = api(c, f"/api/patients/{pid}/timeline")
    seen: list[tuple[str, str]] = []
    cursor: str | None = None
    pages = 0
    while True:
        q = f"/api/patients/{pid}/timeline?limit=1" + (f"&cursor={cursor}" if cursor else "")
        got = api(c, q)
        seen += [(e["kind"], e["id"]) for e in got["entries"] if e["kind"] in ("event", "trigger", "outcome")]
        pages += 1
        cursor = got["next_cursor"]
        if cursor is None:
            break
        assert pages < 20
    want = [(e["kind"], e["id"]) for e in full["entries"] if e["kind"] in ("event", "trigger", "outcome")]
    assert sorted(seen) == sorted(want) and len(seen) == len(set(seen)) and pages > 1
    assert c.get(f"/api/patients/{pid}/timeline").status_code == 401  # token-authenticated
    h = {"authorization": f"Bearer {TOKEN}"}
    assert c.get("/api/patients/pt_" + "a" * 26 + "/timeline", headers=h).status_code == 404
    assert c.get("/api/patients/MRN830001/timeline", headers=h).status_code == 404
    assert c.get(f"/api/patients/{pid}/timeline?cursor=bogus", headers=h).status_code == 422
    assert c.get("/patients/pt_" + "a" * 26).status_code == 404
    # the console page's older-history link walks the same pages
    assert c.get(f"/patients/{pid}?cursor=bogus").status_code == 400


def _trigger(**kw: Any) -> Any:
    from middleware.storage.queries.timeline import TimelineTrigger

    base = dict(id=7, rule_id="r", ruleset_version="v1", name="reminder", purpose="treatment-reminder", destinations="sms,webhook",
                event_id=3, status="pending", reason=None, due_at=1.8e9, created_at=1.7e9, updated_at=1.7e9, fired_at=None,
                journey_id=None, journey_step=None, flag=None, explain=None)
    return TimelineTrigger(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("row", "why", "in_reason"), [
    (dict(status="suppressed", reason="opt-out: sms-stop (all purposes)"), "suppressed", "opt-out"),
    (dict(status="suppressed", reason="consent denies treatment-reminder to sms"), "suppressed", "consent"),
    (dict(status="skipped", reason="frequency cap: 3 contacts in 7 days"), "skipped", "cap"),
    (dict(status="pending", reason="moved by SIU^S14 (event 9) to 2027-01-01T09:00:00+00:00"), "moved", "event 9"),
    (dict(status="cancelled", reason="cancelled before its due time: unless: appointment.cancelled"), "cancelled", "unless"),
    (dict(status="fired", reason="conditions met"), None, "conditions met"),
])
def test_trigger_reasons_are_named(row: dict[str, Any], why: str | None, in_reason: str) -> None:
    from middleware.api.patients import _trigger_entry

    e = _trigger_entry(_trigger(**row))
    assert e.why == why and e.reason is not None and in_reason in e.reason
    assert e.parent == "event:3" and "sms, webhook" in e.summary


def test_quiet_hours_and_send_time_moves_come_from_the_trace() -> None:
    import orjson

    from middleware.api.patients import _trigger_entry

    steps = ["event appointment.booked matches on: appointment.booked", "where is false: name.family = 'X'",
             "send time 10:00 America/New_York on 2027-01-04 = 2027-01-04T15:00:00+00:00",
             "quiet hours 21:00-08:00 America/New_York: moved to 2027-01-05T13:00:00+00:00"]
    e = _trigger_entry(_trigger(explain=orjson.dumps(steps).decode()))
    assert e.why == "moved by quiet hours"
    assert e.timing == steps[2:]  # the timing steps only: never a where clause (it may name values)
    assert _trigger_entry(_trigger(explain="not json")).timing == []


def test_held_out_outcomes_and_dead_deliveries_say_why() -> None:
    from middleware.api.patients import _delivery_entry, _outcome_entry
    from middleware.storage.queries.timeline import TimelineDelivery, TimelineOutcome

    o = _outcome_entry(TimelineOutcome(id=1, goal_id="g", rule_id="r", journey_id=None, trigger_id=None, origin_event_id=4,
                                       experiment="winback", period="2027Q1", arm="held_out", delivered=False,
                                       status="achieved", achieved_at=1.8e9, window_closes=None, created_at=1.7e9,
                                       updated_at=1.7e9))
    assert (o.why, o.arm, o.outcome, o.parent) == ("held out", "held_out", "achieved", "event:4")
    assert o.reason and "winback 2027Q1" in o.reason and "not contacted" in o.reason
    d = _delivery_entry(TimelineDelivery(id=5, trigger_id=7, destination="sms", status="dead", attempts=6,
                                         last_error="gave up after 6 attempts: 503", last_status_code=503,
                                         created_at=1.7e9, updated_at=1.7e9, delivered_at=None))
    assert (d.why, d.attempts, d.href, d.parent) == ("dead", 6, "/deliveries/5", "trigger:7")
    assert d.reason and "HTTP 503" in d.reason


def test_opted_out_patients_reminders_show_suppressed_with_the_reason(rt: Runtime) -> None:
    from middleware.scheduler.runner import Scheduler
    from middleware.storage.queries import timeline as tq

    ingest(rt, siu("S12", control="S1", mrn="MRN830001", appt="W1", start=START))
    c = client(rt)
    csrf = sign_in(c, "otto")
    pid = find(c, csrf, "MRN830001")
    with unit(rt.engine) as u:
        (patient_key,) = tq.keys_of(u, pid)
    r = c.post("/api/suppressions", json={"patient_key": patient_key, "reason": "STOP reply", "source": "sms-stop"},
               headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201, r.text
    later = START + timedelta(hours=1)  # every reminder of the appointment is due by then
    assert Scheduler(rt.engine, rt.ruleset, clock=lambda: later).fire_due() >= 1
    tl = api(c, f"/api/patients/{pid}/timeline")
    reminders = [e for e in tl["entries"] if e["kind"] == "trigger" and "appointment-reminder" in e["summary"]]
    assert reminders and all(e["status"] == "suppressed" and e["why"] == "suppressed" for e in reminders)
    assert all("STOP reply" in (e["reason"] or "") for e in reminders), [e["reason"] for e in reminders]
    assert not [e for e in tl["entries"] if e["kind"] == "delivery"]  # nothing was sent
    page = c.get(f"/patients/{pid}").text
    assert "STOP reply" in page
    assert_pseudonymous(page)


def test_recently_active_patients_page_by_keyset(rt: Runtime) -> None:
    for n, mrn in enumerate(("MRN830001", "MRN830002", "MRN840001")):
        ingest(rt, siu("S12", control=f"R{n}", mrn=mrn, appt=f"R{n}", start=START))
    c = client(rt)
    csrf = sign_in(c, "ana")
    newest_first = [find(c, csrf, m) for m in ("MRN840001", "MRN830002", "MRN830001")]
    seen: list[str] = []
    path = "/api/patients?limit=1"
    for _ in range(6):
        got = api(c, path)
        seen += [p["patient_id"] for p in got["items"]]
        if got["next_before"] is None:
            break
        path = f"/api/patients?limit=1&before={got['next_before']}"
    assert seen == newest_first
    whole = api(c, "/api/patients?limit=50")
    assert [p["patient_id"] for p in whole["items"]] == newest_first and whole["next_before"] is None
    times = [p["last_active"] for p in whole["items"]]
    assert times == sorted(times, reverse=True)
