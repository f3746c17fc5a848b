"""The worker claims, sends and records in batches (one lease UPDATE, executemany inserts):
each delivery of a batch still gets its own outcome, attempt row and disclosure row, a failing
item never changes its neighbours, and the batched send-time checks agree with the single form."""
from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlmodel import Session

from middleware.delivery.gate import send_time_block, send_time_blocks
from middleware.storage.sql import unit
from middleware.delivery.signing import verify
from middleware.storage.tables import (
    Authorization, DeliveryAttempt, DeliveryRow, Disclosure, PatientRow, SendIntent, SendLedger, Suppression, TriggerRow,
)

from support.delivery_pipeline import WEBHOOK_SECRET, Pipeline, destination, make_pipeline, write_mappings

HOOK = "http://receiver.test/hooks"
PAYLOAD = {"appointment_start": "2030-01-01T10:00:00Z", "location": "North clinic", "mrn": "MRN000123"}


def _world(db_url: str, tmp_path: Path, **extra: Any) -> Pipeline:
    p = make_pipeline(db_url, write_mappings(tmp_path, [destination("hook", "webhook", webhook_url=HOOK, **extra)]))
    p.clock.now = datetime.now(timezone.utc)  # webhook signatures carry real time
    return p


def _deliveries(p: Pipeline, n: int, *, purpose: str = "treatment-reminder", patients: list[str] | None = None,
                cancelled: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    """``n`` fired triggers, one delivery each to ``hook``; returns the delivery ids in claim order."""
    now = p.clock().timestamp()
    ids = []
    with Session(p.engine) as s:
        for i in range(n):
            t = TriggerRow(rule_id="r1", ruleset_version="v1", name="reminder", purpose=purpose, destinations="hook",
                           patient_key=(patients or [f"urn:mrn|P{i}" for i in range(n)])[i], origin_key=f"o{i}",
                           due_at=now - 60, status="cancelled" if i in cancelled else "fired",
                           payload=orjson.dumps(PAYLOAD).decode(), created_at=now, updated_at=now, fired_at=now - 60)
            s.add(t)
            s.flush()
            d = DeliveryRow(trigger_id=t.id or 0, destination="hook", idempotency_key=f"idem-{i:03d}",
                            next_attempt_at=now - 60 + i, created_at=now, updated_at=now)
            s.add(d)
            s.flush()
            ids.append(d.id or 0)
        s.commit()
    return ids


def _mock(answers: dict[str, int], seen: dict[str, list[bytes]]) -> httpx.AsyncClient:
    """A receiver answering 200 unless ``answers`` names the webhook-id; keeps every body."""
    def handler(request: httpx.Request) -> httpx.Response:
        wid = verify([WEBHOOK_SECRET], dict(request.headers), request.content, tolerance_s=10**9)  # test clock runs ahead
        seen.setdefault(wid, []).append(request.content)
        return httpx.Response(answers.get(wid, 200))
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _run(p: Pipeline, http: httpx.AsyncClient, **kw: Any) -> int:
    async def go() -> int:
        w = p.worker(http=http, **kw)
        n = await w.run_once()
        await http.aclose()
        return n
    return asyncio.run(go())


def test_one_failing_item_does_not_change_the_others(tmp_path: Path, db_url: str) -> None:
    p = _world(db_url, tmp_path)
    ids = _deliveries(p, 6)
    seen: dict[str, list[bytes]] = {}
    assert _run(p, _mock({"idem-002": 503, "idem-004": 400}, seen)) == 6  # one round, one batch
    rows = {d.id: d for d in p.rows(DeliveryRow)}
    attempts: dict[int, list[DeliveryAttempt]] = {}
    for a in p.rows(DeliveryAttempt):
        attempts.setdefault(a.delivery_id, []).append(a)
    disclosures = {d.delivery_id: d for d in p.rows(Disclosure)}
    assert len(p.rows(Disclosure)) == 4  # one per delivered item, none for the failures
    for i, did in enumerate(ids):
        d = rows[did]
        assert d.attempts == 1 and d.locked_until is None
        assert len(attempts[did]) == 1, attempts[did]
        att = attempts[did][0]
        if i == 2:
            assert d.status == "pending" and d.last_status_code == 503 and d.last_error == "HTTP 503"
            assert d.next_attempt_at > p.clock().timestamp() and d.delivered_at is None
            assert (att.outcome, att.status_code, att.error) == ("retry", 503, "HTTP 503")
            assert did not in disclosures
        elif i == 4:
            assert d.status == "dead" and d.last_status_code == 400 and d.last_error == "HTTP 400"
            assert (att.outcome, att.status_code) == ("permanent", 400)
            assert did not in disclosures
        else:
            assert d.status == "delivered" and d.last_status_code == 200 and d.last_error is None
            assert d.delivered_at is not None
            assert (att.outcome, att.status_code, att.error) == ("delivered", 200, None)
            disc = disclosures[did]
            body = seen[d.idempotency_key][0]
            assert disc.body_sha256 == hashlib.sha256(body).hexdigest() and disc.body_bytes == len(body)
            assert disc.outcome == "delivered" and disc.attempt == 1 and disc.request_target == "POST /hooks"
            assert disc.patient_key == f"urn:mrn|P{i}" and disc.purpose == "treatment-reminder"
            fields = orjson.loads(disc.fields)
            assert "data.contact_key" in fields and "data.appointment_start" in fields
            assert not any("mrn" in f for f in fields) and b"MRN000123" not in body  # the policy ran
    assert sorted(x.idempotency_key for x in p.rows(SendLedger)) == ["idem-000", "idem-001", "idem-003", "idem-005"]

    # the retried item goes again later, alone, and gets its own second attempt row and its disclosure
    p.clock.now = datetime.now(timezone.utc) + timedelta(hours=2)
    seen.clear()
    assert _run(p, _mock({}, seen)) == 1
    d = {x.id: x for x in p.rows(DeliveryRow)}[ids[2]]
    assert d.status == "delivered" and d.attempts == 2
    assert [a.outcome for a in p.rows(DeliveryAttempt, DeliveryAttempt.delivery_id == ids[2])] == ["retry", "delivered"]
    assert [x.attempt for x in p.rows(Disclosure, Disclosure.delivery_id == ids[2])] == [2]
    assert list(seen) == ["idem-002"]


def test_skipped_and_sent_items_share_a_batch(tmp_path: Path, db_url: str) -> None:
    p = _world(db_url, tmp_path)
    now = p.clock().timestamp()
    patients = ["urn:mrn|A", "urn:mrn|B", "urn:mrn|C", "urn:mrn|D", "urn:mrn|A"]
    with Session(p.engine) as s:  # B opted out under an older key merged into B; C opted out of another destination
        s.add(PatientRow(key="urn:mrn|B-old", fhir_id="b-old", resource="{}", merged_into="urn:mrn|B"))
        s.add(Suppression(patient_key="urn:mrn|B-old", reason="STOP", created_at=now, source="sms-stop"))
        s.add(Suppression(patient_key="urn:mrn|C", destination="elsewhere", reason="STOP", created_at=now))
        s.commit()
    ids = _deliveries(p, 5, patients=patients, cancelled={3})
    seen: dict[str, list[bytes]] = {}
    assert _run(p, _mock({}, seen)) == 5
    rows = {d.id: d for d in p.rows(DeliveryRow)}
    assert [rows[i].status for i in ids] == ["delivered", "suppressed", "delivered", "suppressed", "delivered"]
    assert rows[ids[1]].last_error.startswith("opt-out (suppression 1, sms-stop; all destinations)")  # type: ignore[union-attr]
    assert rows[ids[3]].last_error == "trigger was cancelled"
    assert sorted(seen) == ["idem-000", "idem-002", "idem-004"]
    outcomes = {a.delivery_id: a.outcome for a in p.rows(DeliveryAttempt)}
    assert [outcomes[i] for i in ids] == ["delivered", "suppressed", "delivered", "suppressed", "delivered"]
    assert sorted(d.delivery_id for d in p.rows(Disclosure)) == [ids[0], ids[2], ids[4]]


def test_batched_send_time_checks_match_the_single_form(tmp_path: Path, db_url: str) -> None:
    p = _world(db_url, tmp_path)
    now = p.clock().timestamp()
    keys = [f"urn:mrn|M{i}" for i in range(6)]
    with Session(p.engine) as s:
        s.add(PatientRow(key="urn:mrn|old", fhir_id="o", resource="{}", merged_into=keys[1]))
        s.add(Authorization(patient_key="urn:mrn|old", granted_at=now))  # authorization recorded under a merged key
        s.add(Authorization(patient_key=keys[2], granted_at=now, revoked_at=now))
        s.add(Suppression(patient_key=keys[3], purpose="marketing", reason="unsubscribe", created_at=now))
        s.add(Suppression(patient_key=keys[4], purpose="treatment-reminder", reason="x", created_at=now))
        s.add(Authorization(patient_key=keys[3], granted_at=now))
        s.add(Authorization(patient_key=keys[4], granted_at=now))
        s.commit()
    _deliveries(p, 6, purpose="marketing", patients=keys)
    dest = p.rs.destinations["hook"]
    at = p.clock()
    with Session(p.engine) as s:
        triggers = sorted(s.exec(__import__("sqlmodel").select(TriggerRow)).all(), key=lambda t: t.id or 0)
    with unit(p.engine) as u:
        batched = send_time_blocks(u, [(t, dest) for t in triggers], at)
        single = [send_time_block(u, t, dest, at) for t in triggers]
    assert batched == single
    assert [b is None for b in batched] == [False, True, False, False, True, False]


def test_ledger_mode_intents_are_written_per_batch_and_cleared(tmp_path: Path, db_url: str) -> None:
    p = _world(db_url, tmp_path, dedup="ledger")
    ids = _deliveries(p, 4)
    w = p.worker(lease_s=1)
    claimed = w.claim()
    assert [c.delivery_id for c in claimed] == ids and all(c.attempt == 1 for c in claimed)
    assert sorted(i.idempotency_key for i in p.rows(SendIntent)) == [f"idem-{i:03d}" for i in range(4)]
    assert {d.status for d in p.rows(DeliveryRow)} == {"sending"}
    # the worker "stopped" after the send began: nothing recorded; the lease runs out, a new claim finds the intents
    time.sleep(1.1)
    p.clock.now = datetime.now(timezone.utc) + timedelta(seconds=2)
    seen: dict[str, list[bytes]] = {}
    assert _run(p, _mock({}, seen)) == 4
    assert seen == {}  # never sent twice
    rows = p.rows(DeliveryRow)
    assert {d.status for d in rows} == {"unconfirmed"} and {d.attempts for d in rows} == {2}
    assert sorted(d.delivery_id for d in p.rows(Disclosure) if d.outcome == "unconfirmed") == ids
    assert p.rows(SendIntent) == []
    assert len(p.rows(DeliveryAttempt)) == 4


def test_one_kept_alive_client_per_destination(tmp_path: Path, db_url: str) -> None:
    from middleware.delivery.sink import SinkServer

    with SinkServer([WEBHOOK_SECRET]) as sink:
        dests = [destination("hook", "webhook", webhook_url=sink.url + "/a"),
                 destination("hook2", "webhook", webhook_url=sink.url + "/b")]
        p = make_pipeline(db_url, write_mappings(tmp_path, dests))
        p.clock.now = datetime.now(timezone.utc)
        _deliveries(p, 3)
        with Session(p.engine) as s:  # and three more for the second destination
            for d in p.rows(DeliveryRow):
                s.add(DeliveryRow(trigger_id=d.trigger_id, destination="hook2", idempotency_key=d.idempotency_key + "-2",
                                  next_attempt_at=d.next_attempt_at, created_at=d.created_at, updated_at=d.updated_at))
            s.commit()

        async def go() -> tuple[int, list[httpx.AsyncClient], int]:
            w = p.worker()
            n = await w.run_once()
            clients = list(w._clients.values())
            n += await w.run_once()  # a later round reuses them
            again = len(w._clients)
            await w.aclose()
            return n, clients, again
        n, clients, again = asyncio.run(go())
        assert n == 6 and len(clients) == 2 and clients[0] is not clients[1] and again == 2
        assert all(c.is_closed for c in clients)
        assert {d.status for d in p.rows(DeliveryRow)} == {"delivered"}
        assert len(sink.received()) == 6 and sink.duplicates() == 0
