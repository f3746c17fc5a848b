"""Opt-outs, marketing authorizations and FHIR Consents follow patient merges (ADT^A40) the same
way at fire time (scheduler) and at send time (delivery gate): a record under any key of the
patient — the survivor and every key merged into it, transitively — counts for every key,
whether it was recorded before or after the merge and whichever key the trigger carries."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from middleware.config.destinations import Destination
from middleware.delivery.gate import send_time_blocks
from middleware.pipeline.changes import merge_patients
from middleware.storage.sql import unit
from middleware.rules.load import RuleSet, load_ruleset
from middleware.scheduler.runner import Scheduler
from middleware.storage.db import init_db, make_engine
from middleware.storage.tables import Authorization, ConsentRecord, PatientRow, Suppression, TriggerRow
from support.statements import recording

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 6, 1, 16, tzinfo=timezone.utc)
T = NOW.timestamp()
DEST = "webhook"
OPTED_OUT = "patient opted out: STOP"
NO_AUTH = "marketing requires a recorded authorization (prior express written consent) for this patient"
NO_AUTH_AT_SEND = "marketing requires a recorded authorization for this patient (none active at send time)"


def k(name: str) -> str:
    return f"urn:oid:2.16.840.1.113883.3.999|{name}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, synchronous="OFF")
    init_db(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def bundled() -> RuleSet:
    rs, _ = load_ruleset(REPO / "mappings")
    assert rs is not None
    return rs


def trig(name: str, pk: str, purpose: str = "care-coordination") -> TriggerRow:
    return TriggerRow(rule_id="noshow-reengagement", ruleset_version="v", name="noshow_reengagement", purpose=purpose,
                      destinations=DEST, patient_key=pk, resource_key=f"Appointment/{name}", origin_key=name,
                      resource_version="1", due_at=T - 600, status="pending", message_kind=f"kind-{name}", payload="{}",
                      created_at=T - 7200, updated_at=T - 7200)


def optout(pk: str, reason: str = "STOP", **kw: Any) -> Suppression:
    return Suppression(patient_key=pk, reason=reason, created_at=T - 3600, source=kw.pop("source", "sms-stop"), **kw)


def consent(pk: str, cid: str, provision: dict[str, Any]) -> ConsentRecord:
    resource = {"resourceType": "Consent", "id": cid, "status": "active", "patient": {"reference": "Patient/x"},
                "provision": provision}
    return ConsentRecord(patient_key=pk, fhir_id=cid, status="active", resource=orjson.dumps(resource).decode(),
                         received_at=T - 3600, updated_at=T - 3600)


def add(engine: Engine, *rows: Any) -> None:
    with Session(engine) as s:
        s.add_all(rows)
        s.commit()


def merge(engine: Engine, surviving: str, retired: str) -> None:
    """What an ADT^A40 does to the store (``pipeline.changes.merge_patients``)."""
    with unit(engine, write=True) as u:
        merge_patients(u, surviving, retired, NOW)


def fire_and_gate(engine: Engine, rs: RuleSet) -> tuple[dict[str, tuple[str, str | None]], dict[str, str | None]]:
    """Fire everything due; then ask the send-time gate about every trigger (as the delivery worker
    would for its deliveries), whatever the fire-time verdict."""
    assert Scheduler(engine, lambda: rs, clock=lambda: NOW, batch=500).fire_due() > 0
    dest = Destination(name=DEST, type="webhook", baa=True)
    with Session(engine) as s:
        triggers = list(s.exec(select(TriggerRow).order_by(TriggerRow.id)))  # type: ignore[arg-type]
    with unit(engine) as u:
        blocks = send_time_blocks(u, [(t, dest) for t in triggers], NOW)
    fired = {t.origin_key: (t.status, t.reason) for t in triggers}
    sent = {t.origin_key: (b[1] if b else None) for t, b in zip(triggers, blocks)}
    return fired, sent


def test_opt_out_under_a_merged_away_key_suppresses_at_fire_and_send_time(engine: Engine, bundled: RuleSet) -> None:
    add(engine,
        optout(k("before-old")),                           # recorded before the merge, under the key merged away
        trig("t-before-created-old", k("before-old")),     # a trigger made before the merge (moves to the survivor)
        trig("t-before-kept-old", k("before-old")))
    merge(engine, k("before-new"), k("before-old"))
    add(engine,
        trig("t-before-new", k("before-new")),             # made after the merge, under the survivor
        trig("t-after-old", k("after-old")))               # made before its merge ...
    merge(engine, k("after-new"), k("after-old"))
    add(engine, optout(k("after-old")),                    # ... the STOP arrives under the old key after the merge
        trig("t-unrelated", k("unrelated")))
    fired, sent = fire_and_gate(engine, bundled)
    for t in ("t-before-created-old", "t-before-kept-old", "t-before-new", "t-after-old"):
        assert fired[t] == ("suppressed", OPTED_OUT), t
        assert (sent[t] or "").startswith("opt-out (suppression ") and "sms-stop; all destinations): STOP" in (sent[t] or ""), t
    assert fired["t-unrelated"] == ("fired", None) and sent["t-unrelated"] is None


def test_chains_of_merges_and_records_under_the_survivor(engine: Engine, bundled: RuleSet) -> None:
    add(engine, optout(k("A")), trig("t-made-under-A", k("A")))
    merge(engine, k("B"), k("A"))  # A -> B
    merge(engine, k("C"), k("B"))  # B -> C: A -> B -> C
    add(engine, trig("t-C", k("C")),
        # the reverse: a STOP under the survivor, a trigger still carrying the old key (made by a replica
        # that had not yet seen the merge)
        optout(k("S")))
    merge(engine, k("S"), k("S-old"))
    add(engine, trig("t-S-old", k("S-old")))
    fired, sent = fire_and_gate(engine, bundled)
    for t in ("t-made-under-A", "t-C", "t-S-old"):
        assert fired[t] == ("suppressed", OPTED_OUT), t
        assert "all destinations): STOP" in (sent[t] or ""), t


def test_marketing_authorization_under_an_old_key_counts_for_the_survivor(engine: Engine, bundled: RuleSet) -> None:
    add(engine, Authorization(patient_key=k("m-old"), granted_at=T - 100),
        Authorization(patient_key=k("m2-A"), granted_at=T - 100),
        Authorization(patient_key=k("m-revoked-old"), granted_at=T - 100, revoked_at=T - 10))
    merge(engine, k("m-new"), k("m-old"))
    merge(engine, k("m2-B"), k("m2-A"))
    merge(engine, k("m2-C"), k("m2-B"))
    merge(engine, k("m-revoked-new"), k("m-revoked-old"))
    add(engine, trig("t-m-new", k("m-new"), "marketing"), trig("t-m2-C", k("m2-C"), "marketing"),
        trig("t-m-revoked", k("m-revoked-new"), "marketing"))
    fired, sent = fire_and_gate(engine, bundled)
    assert fired["t-m-new"] == ("fired", None) and sent["t-m-new"] is None
    assert fired["t-m2-C"] == ("fired", None) and sent["t-m2-C"] is None
    assert fired["t-m-revoked"] == ("suppressed", NO_AUTH) and sent["t-m-revoked"] == NO_AUTH_AT_SEND


DENY_CARE = {"type": "deny", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "CAREMGT"}]}
PERMIT_BUT_NOT_WEBHOOK = {"type": "permit", "provision": [
    {"type": "deny", "actor": [{"reference": {"reference": f"Organization/{DEST}"}}]}]}
DENY_ALL_BUT_CARE = {"type": "deny", "provision": [
    {"type": "permit", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "CAREMGT"}]}]}


def test_consent_under_a_merged_away_key_counts_at_fire_and_send_time(engine: Engine, bundled: RuleSet) -> None:
    add(engine, consent(k("c-old"), "cons-deny", DENY_CARE),
        consent(k("c2-A"), "cons-actor", PERMIT_BUT_NOT_WEBHOOK),
        consent(k("c3-old"), "cons-permit", DENY_ALL_BUT_CARE),
        Authorization(patient_key=k("c3-new"), granted_at=T - 100))
    merge(engine, k("c-new"), k("c-old"))
    merge(engine, k("c2-B"), k("c2-A"))
    merge(engine, k("c2-C"), k("c2-B"))
    merge(engine, k("c3-new"), k("c3-old"))
    add(engine, trig("t-c-new", k("c-new")), trig("t-c-new-mkt", k("c-new"), "treatment-reminder"),
        trig("t-c2-C", k("c2-C")),
        trig("t-c3-care", k("c3-new")), trig("t-c3-mkt", k("c3-new"), "marketing"))
    fired, sent = fire_and_gate(engine, bundled)
    deny = f"consent cons-deny: deny provision for purpose care-coordination / destination {DEST}"
    assert fired["t-c-new"] == ("suppressed", deny) and sent["t-c-new"] == deny
    assert fired["t-c-new-mkt"] == ("fired", None) and sent["t-c-new-mkt"] is None  # other purpose
    actor = f"consent cons-actor: deny provision for purpose care-coordination / destination {DEST}"
    assert fired["t-c2-C"] == ("suppressed", actor) and sent["t-c2-C"] == actor
    # the permit exception recorded under the old key holds for care coordination, not for marketing
    assert fired["t-c3-care"] == ("fired", None) and sent["t-c3-care"] is None
    mkt = f"consent cons-permit: deny provision for purpose marketing / destination {DEST}"
    assert fired["t-c3-mkt"] == ("suppressed", mkt) and sent["t-c3-mkt"] == mkt


def test_scoped_suppressions_under_an_old_key(engine: Engine, bundled: RuleSet) -> None:
    add(engine, optout(k("s-old"), "unsubscribe", purpose="marketing", source="unsubscribe"),
        optout(k("d-old"), "STOP webhook only", destination=DEST, source="operator"),
        Authorization(patient_key=k("s-new"), granted_at=T - 100))
    merge(engine, k("s-new"), k("s-old"))
    merge(engine, k("d-new"), k("d-old"))
    add(engine, trig("t-s-mkt", k("s-new"), "marketing"), trig("t-s-care", k("s-new")), trig("t-d", k("d-new")))
    fired, sent = fire_and_gate(engine, bundled)
    assert fired["t-s-mkt"] == ("suppressed", "patient opted out: unsubscribe")
    assert "unsubscribe; all destinations): unsubscribe" in (sent["t-s-mkt"] or "")
    assert fired["t-s-care"] == ("fired", None) and sent["t-s-care"] is None
    # a suppression for one destination is a send-time matter: the trigger fires, that delivery is stopped
    assert fired["t-d"] == ("fired", None)
    assert f"operator; destination {DEST}): STOP webhook only" in (sent["t-d"] or "")


def test_death_recorded_under_a_merged_away_key_suppresses_at_fire_time(engine: Engine, bundled: RuleSet) -> None:
    dead = orjson.dumps({"resourceType": "Patient", "deceasedBoolean": True}).decode()
    add(engine, PatientRow(key=k("dead-old"), fhir_id="d", resource=dead),
        PatientRow(key=k("dead-new"), fhir_id="n", resource=orjson.dumps({"resourceType": "Patient"}).decode()))
    merge(engine, k("dead-new"), k("dead-old"))
    add(engine, trig("t-dead", k("dead-new")))
    fired, _ = fire_and_gate(engine, bundled)
    assert fired["t-dead"] == ("suppressed", "patient is deceased")


def test_a_batch_is_checked_with_the_same_statements_whatever_its_size(engine: Engine, bundled: RuleSet,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Fire time and send time read a batch with a fixed number of statements (one per table, plus
    the merges), not one per trigger or per merged key."""
    def statements(n: int) -> list[str]:
        with Session(engine) as s:
            s.exec(delete(TriggerRow))  # type: ignore[call-overload]
            s.commit()
        for i in range(n):
            old, mid, new = k(f"n{n}-{i}-old"), k(f"n{n}-{i}"), k(f"n{n}-{i}-next")
            add(engine, optout(old), Authorization(patient_key=old, granted_at=T - 100), consent(old, f"c{n}-{i}", DENY_CARE))
            merge(engine, mid, old)
            merge(engine, new, mid)
            add(engine, trig(f"n{n}-{i}-a", new, "marketing"), trig(f"n{n}-{i}-b", new))
        with recording(engine, monkeypatch) as seen:
            fired, sent = fire_and_gate(engine, bundled)
        assert len(fired) == 2 * n
        assert all(v == ("suppressed", OPTED_OUT) for v in fired.values()), fired
        assert all("all destinations): STOP" in (r or "") for r in sent.values()), sent
        return seen

    assert statements(2) == statements(40)
