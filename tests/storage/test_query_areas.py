"""The named queries of ``storage/queries/`` on both backends: each area's functions return what
the data holds (rows written through the ORM, read back through the registry's statements)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from middleware.storage.db import init_db, make_engine
from middleware.storage.queries import metrics
from middleware.storage.tables import DeliveryRow, InboundMessage, KeyValue, TriggerRow


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    init_db(e)
    yield e
    e.dispose()


def _trigger(i: int, status: str, due_at: float) -> TriggerRow:
    return TriggerRow(rule_id="r", ruleset_version="v", name="n", purpose="treatment-reminder", destinations="d1",
                      patient_key=f"p{i}", origin_key=f"o{i}", due_at=due_at, status=status, payload="{}",
                      created_at=0.0, updated_at=0.0)


def test_metrics_figures_count_what_is_stored(engine: Engine) -> None:
    metrics.ping(engine)
    empty = metrics.database_figures(engine, now=1000.0)
    assert empty.backlog == metrics.Backlog(None, 0) and empty.triggers_pending == 0 and empty.deliveries == ()
    with Session(engine) as s:
        s.add_all([InboundMessage(source="s", channel="mllp", received_at=t, raw=b"x", sha256="h", status=st)
                   for t, st in ((50.0, "received"), (40.0, "processed"), (60.0, "received"))])
        s.add_all([_trigger(1, "pending", 900.0), _trigger(2, "pending", 2000.0), _trigger(3, "fired", 10.0)])
        s.add_all([DeliveryRow(trigger_id=1, destination=d, idempotency_key=f"k{i}", status=st, next_attempt_at=0.0,
                               created_at=0.0, updated_at=0.0)
                   for i, (d, st) in enumerate((("d1", "dead"), ("d1", "dead"), ("d2", "delivered")))])
        s.add_all([KeyValue(key="destination.paused.d2", value="{}"), KeyValue(key="destination.disabled.d3", value="{}"),
                   KeyValue(key="retention.from", value="{}")])
        s.commit()
    f = metrics.database_figures(engine, now=1000.0)
    assert f.backlog == metrics.Backlog(50.0, 2)
    assert (f.triggers_pending, f.triggers_due, f.oldest_due_at) == (2, 1, 900.0)
    assert sorted(f.deliveries) == [("d1", "dead", 2), ("d2", "delivered", 1)]
    assert f.paused_destinations == {"d2", "d3"}


def test_retention_blanks_finished_bodies_only(engine: Engine) -> None:
    from middleware.delivery.retention import purge
    from middleware.storage.tables import EventRow

    with Session(engine) as s:
        s.add_all([InboundMessage(source="s", channel="mllp", received_at=10.0, raw=b"x", ack=b"a", sha256="h",
                                  status=st) for st in ("received", "processed")])
        s.add(EventRow(type="t", resource_type="Patient", resource_key="k", resource='{"a":1}', source="s",
                       arrival="message", occurred_at=1.0, created_at=10.0))
        for i, st in enumerate(("fired", "fired", "pending")):
            t = _trigger(i, st, 0.0)
            t.payload, t.explain, t.updated_at = '{"p":1}', "why", 10.0
            s.add(t)
        s.commit()
        s.add(DeliveryRow(trigger_id=2, destination="d1", idempotency_key="k", status="sending", next_attempt_at=0.0,
                          created_at=0.0, updated_at=0.0))  # trigger 2 still has a delivery in flight
        s.commit()
    rep = purge(engine, now=10.0 + 2 * 86400, days=1)
    assert (rep.inbound, rep.events, rep.triggers) == (1, 1, 1)
    with Session(engine) as s:
        assert sorted((m.status, m.raw, m.ack) for m in s.query(InboundMessage)) == [
            ("processed", None, None), ("received", b"x", b"a")]
        assert sorted((t.id, t.payload, t.explain) for t in s.query(TriggerRow)) == [
            (1, "{}", None), (2, '{"p":1}', "why"), (3, '{"p":1}', "why")]
        assert [e.resource for e in s.query(EventRow)] == ["{}"]
        assert s.get(KeyValue, "retention.from") is not None
    assert purge(engine, now=10.0 + 2 * 86400, days=1).triggers == 0  # idempotent


def test_delivery_admin_filters_replay_and_pauses(engine: Engine) -> None:
    from middleware.delivery import admin
    from middleware.storage.tables import DeliveryAlert, DeliveryAttempt, SendIntent

    with Session(engine) as s:
        s.add_all([_trigger(1, "fired", 0.0), _trigger(2, "fired", 0.0)])
        s.commit()
        t2 = s.get(TriggerRow, 2)
        assert t2 is not None
        t2.rule_id = "other"
        s.add(t2)
        rows = [("d1", "dead", 1, "HTTP 500 from d1"), ("d1", "dead", 2, "timeout"), ("d2", "dead", 1, "HTTP 500"),
                ("d1", "delivered", 1, None), ("d1", "pending", 1, None)]
        s.add_all([DeliveryRow(trigger_id=t, destination=d, idempotency_key=f"k{i}", status=st, attempts=5,
                               next_attempt_at=5000.0, last_error=err, created_at=0.0, updated_at=0.0)
                   for i, (d, st, t, err) in enumerate(rows)])
        s.add_all([DeliveryAttempt(delivery_id=1, at=1.0, outcome="retry", error="e1"),
                   DeliveryAttempt(delivery_id=1, at=2.0, outcome="permanent", error="e2"),
                   SendIntent(idempotency_key="k0", delivery_id=1, destination="d1", started_at=0.0),
                   KeyValue(key="destination.paused.d1", value='{"reason": "401"}'),
                   DeliveryAlert(kind="auth-failure", destination="d1", delivery_id=1, message="m", created_at=3.0),
                   DeliveryAlert(kind="auth-failure", destination="d2", delivery_id=3, message="m", created_at=4.0)])
        s.commit()
    assert [d["id"] for d in admin.list_deliveries(engine)] == [5, 4, 3, 2, 1]
    listed = admin.list_deliveries(engine, status="dead", destination="d1", limit=1, with_history=True)
    assert [(d["id"], d["rule_id"]) for d in listed] == [(2, "other")] and listed[0]["history"] == []
    hist = admin.list_deliveries(engine, status="dead", destination="d1", with_history=True)[1]["history"]
    assert [h["error"] for h in hist] == ["e1", "e2"]
    assert admin.paused_destinations(engine) == {"d1": {"kind": "paused", "reason": "401"}}
    assert [a["destination"] for a in admin.alerts(engine)] == ["d2", "d1"]
    assert admin.replay(engine, status="dead", rule_id="other", now=100.0) == 1  # delivery 2
    assert admin.replay(engine, status="dead", reason_contains="HTTP 500", delivery_id=3, now=100.0) == 1
    assert admin.replay(engine, status="dead", destination="d1", now=100.0) == 1  # delivery 1; lifts d1's pause
    with Session(engine) as s:
        got = {d.id: (d.status, d.attempts, d.next_attempt_at) for d in s.query(DeliveryRow)}
        assert got == {1: ("pending", 0, 100.0), 2: ("pending", 0, 100.0), 3: ("pending", 0, 100.0),
                       4: ("delivered", 5, 5000.0), 5: ("pending", 5, 100.0)}  # 5 waited behind the pause: due now
        assert s.get(SendIntent, "k0") is None
    assert admin.paused_destinations(engine) == {}
    assert [a["destination"] for a in admin.alerts(engine)] == ["d2"]
    assert len(admin.alerts(engine, open_only=False)) == 2
    assert admin.resume(engine, "d2", now=200.0) is False
    assert admin.alerts(engine) == []


def test_disclosure_reads_and_contact_key_lookup(engine: Engine) -> None:
    from middleware.delivery import audit, contact_keys
    from middleware.config.policy import contact_key
    from middleware.keyring import ContactKeyring, ContactSecret
    from middleware.storage.tables import Disclosure, PatientRow

    with Session(engine) as s:
        s.add(PatientRow(key="pa", fhir_id="a", resource="{}"))
        s.add_all([Disclosure(delivery_id=i, trigger_id=i, patient_key=pk, destination=d, fields='["a"]', body_sha256="h",
                              purpose="treatment-reminder", rule_id="r", ruleset_version="v", sent_at=at, outcome="delivered")
                   for i, (pk, d, at) in enumerate((("pb", "d1", 10.0), ("pb", "d2", 20.0), ("pc", "d1", 30.0),
                                                    ("pb", "d1", 5.0)))])
        s.commit()
    assert [r["sent_at"][-14:-6] for r in audit.disclosures_for(engine, "pb")] == ["00:00:05", "00:00:10", "00:00:20"]
    assert [r["delivery_id"] for r in audit.disclosures_for(engine, "pb", since=6.0, until=20.0)] == [0]
    assert [r["delivery_id"] for r in audit.disclosures_for(engine, "pb", destination="d2")] == [1]
    assert list(contact_keys.disclosed_patients(engine)) == ["pb", "pc"]
    assert list(contact_keys.disclosed_patients(engine, "d2")) == ["pb"]
    ring = ContactKeyring((ContactSecret("v1", "s" * 32),))
    assert contact_keys.resolve(engine, ring, contact_key("s" * 32, "pa")) == ("pa", "v1")
    assert contact_keys.resolve(engine, ring, contact_key("s" * 32, "pc")) == ("pc", "v1")
    assert contact_keys.resolve(engine, ring, contact_key("s" * 32, "nobody")) is None


def test_delivery_worker_claims_sends_and_records_on_both_backends(engine: Engine, tmp_path: Path) -> None:
    """The worker's named queries end to end: claim (a paused destination's rows are not claimed),
    lease, send-time opt-out, ledger-mode intents, then one record transaction with delivered,
    retry, dead, suppressed and an auth failure that pauses its destination and raises an alert."""
    import asyncio
    from datetime import datetime, timezone

    import httpx

    from middleware.delivery.signing import verify
    from middleware.delivery.worker import DeliveryWorker
    from middleware.rules.load import load_ruleset
    from middleware.storage.tables import (DeliveryAlert, DeliveryAttempt, Disclosure, SendIntent, SendLedger,
                                           Suppression)
    from support.delivery_pipeline import CONTACT_SECRET, SECRETS, WEBHOOK_SECRET, destination, write_mappings

    hook = "http://receiver.test/hooks"
    mappings = write_mappings(tmp_path, [destination("hook", "webhook", webhook_url=hook, dedup="ledger"),
                                         destination("hook2", "webhook", webhook_url=hook + "2")])
    rs, diags = load_ruleset(mappings)
    assert rs is not None, diags
    now = datetime.now(timezone.utc)
    ts = now.timestamp()
    plan = [("hook", 200), ("hook", 503), ("hook", 400), ("hook", 200), ("hook2", 401), ("hook2", 200)]
    with Session(engine) as s:
        for i, (dest, _) in enumerate(plan):
            t = _trigger(i, "fired", ts - 60)
            t.destinations, t.payload, t.fired_at, t.name, t.rule_id = dest, '{"location": "North"}', ts - 60, "reminder", "r1"
            s.add(t)
            s.flush()
            s.add(DeliveryRow(trigger_id=t.id or 0, destination=dest, idempotency_key=f"idem-{i}", next_attempt_at=ts - 60 + i,
                              created_at=ts, updated_at=ts))
        s.add(Suppression(patient_key="p3", reason="STOP", created_at=ts))  # delivery 4 (trigger of p3) is suppressed
        s.add(KeyValue(key="destination.paused.other", value="{}"))
        s.commit()
    answers = {f"idem-{i}": code for i, (_, code) in enumerate(plan)}

    def handler(request: httpx.Request) -> httpx.Response:
        wid = verify([WEBHOOK_SECRET], dict(request.headers), request.content, tolerance_s=10**9)
        return httpx.Response(answers[wid])

    async def one_round() -> int:
        w = DeliveryWorker(engine, lambda: rs, contact_secret=CONTACT_SECRET, clock=lambda: now, secrets=SECRETS,
                           http=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
        claimed = w.claim()
        assert [c.delivery_id for c in claimed] == [1, 2, 3, 4, 5, 6]
        with Session(engine) as s:
            assert {i.idempotency_key for i in s.query(SendIntent)} == {"idem-0", "idem-1", "idem-2"}  # ledger mode
            assert {d.status for d in s.query(DeliveryRow)} == {"sending"}
        assert w.claim() == []  # leased: not claimed again
        with Session(engine) as s:
            for d in s.query(DeliveryRow):
                d.status, d.attempts, d.locked_until = "pending", 0, None
                s.add(d)
            s.query(SendIntent).delete()
            s.commit()
        n = await w.run_once()
        await w.aclose()
        return n

    assert asyncio.run(one_round()) == 6
    with Session(engine) as s:
        got = {d.id: (d.status, d.attempts, d.last_status_code) for d in s.query(DeliveryRow)}
        assert got == {1: ("delivered", 1, 200), 2: ("pending", 1, 503), 3: ("dead", 1, 400),
                       4: ("suppressed", 1, None), 5: ("pending", 1, 401), 6: ("pending", 1, None)}  # 6: circuit opened
        assert sorted(a.delivery_id for a in s.query(DeliveryAttempt)) == [1, 2, 3, 4, 5, 6]
        assert sorted((x.delivery_id, x.outcome) for x in s.query(Disclosure)) == [(1, "delivered")]
        assert [x.idempotency_key for x in s.query(SendLedger)] == ["idem-0"]
        assert list(s.query(SendIntent)) == []
        assert [(a.kind, a.destination) for a in s.query(DeliveryAlert)] == [("auth-failure", "hook2")]
        assert s.get(KeyValue, "destination.paused.hook2") is not None


def test_kv_reads_and_writes_and_last_received(engine: Engine) -> None:
    from middleware.storage.queries import kv
    from middleware.storage.sql import unit

    with unit(engine, write=True) as u:
        assert kv.get_json(u, "a.1") is None
        kv.put_json(u, "a.1", {"n": 1}, 1.0)
        kv.put_json(u, "a.1", {"n": 2}, 2.0)  # replaces
        assert kv.add(u, "a.2", '{"n": 3}', 3.0) is True
        assert kv.add(u, "a.2", '{"n": 4}', 4.0) is False  # kept
        kv.put_json(u, "b.1", {}, 5.0)
    with unit(engine) as u:
        assert kv.get_json(u, "a.1") == {"n": 2}
        assert kv.with_prefix_json(u, "a.") == {"a.1": {"n": 2}, "a.2": {"n": 3}}
    with Session(engine) as s:
        s.add_all([InboundMessage(source=src, channel=ch, received_at=t, raw=b"x", sha256="h")
                   for src, ch, t in (("s1", "fhir", 10.0), ("s1", "fhir", 30.0), ("s1", "mllp", 50.0), ("s2", "fhir", 70.0))])
        s.commit()
    assert metrics.last_received(engine, channel="fhir", source="s1") == 30.0
    assert metrics.last_received(engine, channel="http", source="s1") is None


def test_admin_audit_appends_and_pages(engine: Engine) -> None:
    from middleware.delivery import admin_audit

    ids = [admin_audit.record(engine, actor=actor, channel="cli", action=action, at=at, target_id=7, detail={"n": at})
           for actor, action, at in (("ann", "deliveries.replay", 10.0), ("bob", "suppression.add", 20.0),
                                     ("ann", "suppression.add", 30.0), ("ann", "deliveries.replay", 40.0))]
    assert ids == sorted(ids) and len(set(ids)) == 4
    rows, more = admin_audit.query(engine, limit=3)
    assert [r["id"] for r in rows] == ids[:0:-1] and more == ids[1]
    rows, more = admin_audit.query(engine, before_id=more)
    assert [r["id"] for r in rows] == [ids[0]] and more is None
    rows, _ = admin_audit.query(engine, actor="ann", action="suppression.add")
    assert [(r["actor"], r["target_id"], r["detail"]) for r in rows] == [("ann", "7", {"n": 30.0})]
    assert [r["id"] for r in admin_audit.query(engine, since=20.0)[0]] == ids[:0:-1]


def test_operator_pages_filters_and_single_rows(engine: Engine) -> None:
    from middleware.storage.queries import operator as op
    from middleware.storage.sql import unit
    from middleware.storage.tables import DeliveryAttempt, EventRow

    with Session(engine) as s:
        s.add_all([InboundMessage(source=src, channel="mllp", received_at=1.0, raw=raw, sha256="h", status=st)
                   for src, st, raw in (("a", "failed", b"MSH|1"), ("b", "processed", b"MSH|22"), ("a", "processed", None))])
        s.add_all([EventRow(type=t, resource_type="Appointment", resource_key="k", patient_key=pk, resource="{}", source="s",
                            arrival=arr, occurred_at=1.0, created_at=1.0)
                   for t, pk, arr in (("booked", "p1", "message"), ("noshow", "p1", "reconcile"), ("booked", "p2", "message"))])
        s.add_all([_trigger(1, "pending", 5.0), _trigger(2, "fired", 6.0)])
        s.add_all([DeliveryRow(trigger_id=2, destination=d, idempotency_key=f"k{d}", status=st, next_attempt_at=0.0,
                               created_at=0.0, updated_at=0.0) for d, st in (("d1", "dead"), ("d2", "delivered"))])
        s.add_all([DeliveryAttempt(delivery_id=1, at=a, outcome="retry", duration_ms=1.234) for a in (1.0, 2.0)])
        s.commit()
    with unit(engine) as u:
        assert [(m.id, m.size) for m in op.messages(u, limit=10, before_id=None, status=None, source=None)] == [
            (3, 0), (2, 6), (1, 5)]
        assert [m.id for m in op.messages(u, limit=10, before_id=3, status="processed", source=None)] == [2]
        assert [m.id for m in op.messages(u, limit=1, before_id=0, status=None, source="a")] == [3]
        raw = op.message_raw(u, 1)
        assert raw is not None and bytes(raw.raw or b"") == b"MSH|1" and op.message_raw(u, 99) is None
        assert [e.id for e in op.events(u, limit=10, before_id=None, type="booked", patient_key=None, arrival=None)] == [3, 1]
        assert [e.id for e in op.events(u, limit=10, before_id=None, type=None, patient_key="p1", arrival="reconcile")] == [2]
        assert [t.id for t in op.triggers(u, limit=10, before_id=None, status="pending", rule_id="r", patient_key=None)] == [1]
        t = op.trigger(u, 2)
        assert t is not None and t.status == "fired" and op.trigger(u, 3) is None
        assert [d.id for d in op.deliveries(u, limit=10, before_id=None, status=None, destination="d1")] == [1]
        assert [a.at for a in op.attempts_of(u, [1, 2])] == [1.0, 2.0]
    with unit(engine, write=True) as u:
        assert op.requeue_message(u, 1) is True and op.requeue_message(u, 99) is False
    with Session(engine) as s:
        m = s.get(InboundMessage, 1)
        assert m is not None and (m.status, m.error) == ("received", None)


def test_privacy_records_write_list_and_revoke(engine: Engine) -> None:
    from middleware.storage.queries import privacy as pq
    from middleware.storage.sql import unit
    from middleware.storage.tables import PatientRow

    with Session(engine) as s:
        s.add(PatientRow(key="urn:mrn|1", fhir_id="pat-1", resource="{}"))
        s.commit()
    with unit(engine, write=True) as u:
        assert pq.patient_by_fhir_id(u, "pat-1") == "urn:mrn|1" and pq.patient_by_fhir_id(u, "nope") is None
        c1 = pq.put_consent(u, patient_key="urn:mrn|1", fhir_id="c-1", status="active", resource='{"a":1}', now=10.0)
        c2 = pq.put_consent(u, patient_key="urn:mrn|1", fhir_id="c-1", status="inactive", resource='{"a":2}', now=20.0)
        c3 = pq.put_consent(u, patient_key="urn:mrn|1", fhir_id=None, status="active", resource="{}", now=30.0)
        assert c2.id == c1.id != c3.id and (c2.status, c2.resource, c2.received_at, c2.source) == ("inactive", '{"a":2}', 10.0, "api")
        s1 = pq.add_suppression(u, patient_key="p", destination=None, purpose=None, reason="STOP", source="sms-stop",
                                created_at=1.0)
        s2 = pq.add_suppression(u, patient_key="q", destination="d", purpose="marketing", reason="x", source="operator",
                                created_at=2.0)
        a1 = pq.add_authorization(u, patient_key="p", purpose="marketing", reference="form", granted_at=3.0)
    with unit(engine, write=True) as u:
        assert [c.id for c in pq.consents_of(u, "urn:mrn|1")] == [c1.id, c3.id]
        assert [r.id for r in pq.suppressions(u, patient_key=None, active=True, limit=10)] == [s2.id, s1.id]
        revoked = pq.revoke_suppression(u, s1.id, 50.0)
        assert revoked is not None and revoked.revoked_at == 50.0
        again = pq.revoke_suppression(u, s1.id, 60.0)
        assert again is not None and again.revoked_at == 50.0  # idempotent: the first revocation stands
        assert pq.revoke_suppression(u, 999, 60.0) is None
        assert [r.id for r in pq.suppressions(u, patient_key=None, active=True, limit=10)] == [s2.id]
        assert [r.id for r in pq.suppressions(u, patient_key="p", active=False, limit=10)] == [s1.id]
        assert [a.reference for a in pq.authorizations_of(u, "p")] == ["form"]
        ra = pq.revoke_authorization(u, a1.id, 70.0)
        assert ra is not None and ra.revoked_at == 70.0 and pq.revoke_authorization(u, 999, 1.0) is None


def test_every_named_query_compiles_on_both_dialects_and_claims_skip_locked_on_postgresql() -> None:
    import middleware.storage.queries  # noqa: F401  (registers every area)
    from middleware.storage.sql import REGISTRY

    for name, q in REGISTRY.items():
        lite, pg = q.compiled_for("sqlite").sql, q.compiled_for("postgresql").sql
        assert "%s" not in lite and "%(" not in lite, (name, lite)  # qmark placeholders only
        assert "?" not in pg and "%(" not in pg, (name, pg)  # positional %s only
    for name in ("delivery.claim_due", "delivery.claim_expired", "scheduler.claim"):
        assert REGISTRY[name].compiled_for("postgresql").sql.rstrip().endswith("FOR UPDATE SKIP LOCKED"), name
        assert "FOR UPDATE" not in REGISTRY[name].compiled_for("sqlite").sql, name
