"""Exits end to end (issue 17): a reminder reaches a real webhook receiver; the visit is cancelled;
careloop cancels its own pending reminder AND tells the receiver the patient left the journey, with
a generic ``careloop_exit`` (no reason), recorded in the disclosure audit like any delivery. A death
exits every entry at every destination; reprocessing never makes a second exit."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from middleware.delivery.sink import SinkServer
from middleware.storage.tables import DeliveryRow, Disclosure, TriggerRow

from support.delivery_pipeline import WEBHOOK_SECRET, Pipeline, destination, make_pipeline, write_mappings
from support.hl7msgs import siu

MRN = "MRN000777"


def _world(db_url: str, tmp_path: Path, sink: SinkServer, *, exits: bool = True, second: bool = False) -> Pipeline:
    dests = [destination("hook", "webhook", webhook_url=sink.url + "/hooks", **({"exit": {}} if exits else {}))]
    if second:
        dests.append(destination("hook2", "webhook", webhook_url=sink.url + "/hooks2", exit={"event_name": "left_journey"}))
    p = make_pipeline(db_url, write_mappings(tmp_path, dests))
    p.clock.now = datetime.now(timezone.utc)
    return p


def _deliver(p: Pipeline) -> int:
    async def go() -> int:
        w = p.worker()
        total = 0
        for _ in range(20):
            n = await w.run_once()
            total += n
            if not n:
                break
        await w.aclose()
        return total
    return asyncio.run(go())


def _book_and_remind(p: Pipeline, start: datetime, control: str = "EX-1") -> None:
    """Book a visit three days and an hour out; fire and deliver the 72-hour reminder."""
    p.ingest([siu("S12", control=control, mrn=MRN, start=start)])
    p.fire(after=timedelta(hours=2))
    assert _deliver(p) >= 1


def _exits(p: Pipeline) -> list[Any]:
    return [d for d in p.rows(DeliveryRow) if d.kind == "exit"]


@pytest.fixture
def sink() -> Any:
    with SinkServer([WEBHOOK_SECRET], tolerance_s=10**6) as s:
        yield s


def test_cancelled_visit_exits_the_journey_at_the_destination(db_url: str, tmp_path: Path, sink: SinkServer) -> None:
    p = _world(db_url, tmp_path, sink)
    start = datetime.now(timezone.utc) + timedelta(days=3, hours=1)
    _book_and_remind(p, start)
    [entry] = [r for r in sink.received() if r["type"] != "careloop_exit"]
    assert entry["verified"] is True
    assert _exits(p) == []

    p.ingest([siu("S15", control="EX-2", mrn=MRN, start=start, status="Cancelled")])
    reminders = {t.rule_id: t for t in p.rows(TriggerRow)}
    assert reminders["appointment-reminder-24h"].status == "cancelled"
    [ex] = _exits(p)
    assert ex.destination == "hook" and ex.status == "pending"
    assert ex.trigger_id == reminders["appointment-reminder-72h"].id  # the entry that reached the destination

    assert _deliver(p) == 1
    [got] = [r for r in sink.received() if r["type"] == "careloop_exit"]
    assert got["verified"] is True and got["webhook_id"] == ex.idempotency_key
    body = got["body"]
    assert set(body["data"]) == {"contact_key", "occurred_at", "journey", "trigger_id"}  # ids only
    assert body["data"]["contact_key"] == entry["contact_key"]
    text = str(body).lower()
    assert "cancel" not in text and "reason" not in text and MRN.lower() not in text
    [d] = [r for r in p.rows(DeliveryRow) if r.kind == "exit"]
    assert d.status == "delivered" and d.confirmation is None  # a webhook's 2xx is final
    disclosed = [x for x in p.rows(Disclosure) if x.delivery_id == d.id]
    assert len(disclosed) == 1 and disclosed[0].destination == "hook" and "contact_key" in disclosed[0].fields

    # the same cancellation again (a resend, a reprocess) makes no second exit
    p.ingest([siu("S15", control="EX-3", mrn=MRN, start=start, status="Cancelled")])
    assert len(_exits(p)) == 1


def test_no_exit_without_exit_configured_or_before_anything_was_delivered(db_url: str, tmp_path: Path,
                                                                          sink: SinkServer) -> None:
    p = _world(db_url, tmp_path, sink, exits=False)
    start = datetime.now(timezone.utc) + timedelta(days=3, hours=1)
    _book_and_remind(p, start)
    p.ingest([siu("S15", control="NX-2", mrn=MRN, start=start, status="Cancelled")])
    assert _exits(p) == []

    q = _world(db_url, tmp_path / "b", sink)  # the same database, now with exits configured
    q.ingest([siu("S12", control="NX-3", mrn="MRN000778", appt="F6001", start=start)])
    q.ingest([siu("S15", control="NX-4", mrn="MRN000778", appt="F6001", start=start, status="Cancelled")])
    assert _exits(q) == []  # cancelled before any reminder reached the destination: nothing to exit


def test_death_exits_every_entry_at_every_destination(db_url: str, tmp_path: Path, sink: SinkServer) -> None:
    p = _world(db_url, tmp_path, sink, second=True)
    start = datetime.now(timezone.utc) + timedelta(days=3, hours=1)
    _book_and_remind(p, start)
    died = siu("S14", control="EX-D", mrn=MRN, start=start).decode().split("\r")
    died = [seg + "|" * (30 - seg.count("|")) + "Y" if seg.startswith("PID|") else seg for seg in died]
    p.ingest(["\r".join(died).encode()])
    exits = _exits(p)
    assert sorted(e.destination for e in exits) == ["hook", "hook2"]
    assert _deliver(p) == 2
    names = sorted(r["type"] for r in sink.received() if r["type"] in ("careloop_exit", "left_journey"))
    assert names == ["careloop_exit", "left_journey"]
