"""Delivery failure handling through the real worker and database, with respx injecting
the receiver's failures (through the worker's ``transport_factory``): 5xx and timeouts back off durably, 429 honours Retry-After,
4xx other than 408/429 dead-letters at once, exhaustion dead-letters, replay revives."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import respx
from sqlmodel import Session, select

from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.delivery.worker import DeliveryWorker, replay
from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.scheduler.runner import Scheduler
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter
from middleware.storage.tables import DeliveryAttempt, DeliveryRow
from tests.support.hl7msgs import siu

HOOK = "http://receiver.test/hooks"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 6, 4, 15, 0, tzinfo=timezone.utc)  # 11:00 in New York, after the wall clock (replay uses it)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(tmp_path: Path, pipeline_mappings: Path, monkeypatch: pytest.MonkeyPatch, db_url: str):
    mappings_dir = pipeline_mappings
    monkeypatch.setenv("CARELOOP_WEBHOOK_URL", HOOK)
    monkeypatch.setenv("CARELOOP_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
    (mappings_dir / "destinations.yaml").write_text(
        (mappings_dir / "destinations.yaml").read_text().replace("    type: webhook\n", "    type: webhook\n    max_attempts: 3\n    backoff_base_s: 10\n")
    )
    rs, diags = load_ruleset(mappings_dir)
    assert rs is not None, diags
    engine = make_engine(db_url)
    init_db(engine)
    clock = Clock()
    # a no-show -> one immediate trigger -> one delivery
    raw = siu("S26", control="DF-1", appt="FD1", status="Noshow", sent=clock.now)
    writer = InboxWriter(engine)
    writer.write_batch([InboundRecord(source="default", channel="mllp", raw=raw, sha256="x", status="received")])
    Processor(engine, lambda: rs, clock=clock).drain()
    Scheduler(engine, lambda: rs, clock=clock).fire_due()
    # the worker's own per-destination client, its transport swapped for respx's router (the test transport)
    worker = DeliveryWorker(engine, lambda: rs, contact_secret="k", clock=clock,
                            transport_factory=lambda _policy: httpx.MockTransport(respx.mock.async_handler))
    yield engine, clock, worker
    asyncio.run(worker.aclose())
    engine.dispose()


def delivery(engine) -> DeliveryRow:
    with Session(engine) as s:
        return s.exec(select(DeliveryRow)).one()


def attempts(engine) -> list[DeliveryAttempt]:
    with Session(engine) as s:
        return list(s.exec(select(DeliveryAttempt).order_by(DeliveryAttempt.id)))


@respx.mock
def test_5xx_then_timeout_back_off_then_success(world):
    engine, clock, worker = world
    route = respx.post(HOOK).mock(side_effect=[httpx.Response(503), httpx.ReadTimeout("slow"), httpx.Response(200)])
    asyncio.run(worker.run_once())
    d = delivery(engine)
    assert d.status == "pending" and d.attempts == 1 and d.last_status_code == 503
    assert 9 <= d.next_attempt_at - clock.now.timestamp() <= 11  # 10 s base backoff ±10 %
    assert asyncio.run(worker.run_once()) == 0  # not due yet: nothing sent
    clock.now += timedelta(seconds=12)
    asyncio.run(worker.run_once())
    d = delivery(engine)
    assert d.status == "pending" and d.attempts == 2
    assert 18 <= d.next_attempt_at - clock.now.timestamp() <= 22  # doubled
    clock.now += timedelta(seconds=25)
    asyncio.run(worker.run_once())
    assert delivery(engine).status == "delivered"
    assert route.call_count == 3
    ids = {c.request.headers["webhook-id"] for c in route.calls}
    assert len(ids) == 1  # the same idempotency key on every attempt
    assert [a.outcome for a in attempts(engine)] == ["retry", "retry", "delivered"]


@respx.mock
def test_429_retry_after_is_honoured(world):
    engine, clock, worker = world
    respx.post(HOOK).mock(return_value=httpx.Response(429, headers={"Retry-After": "120"}))
    asyncio.run(worker.run_once())
    d = delivery(engine)
    assert d.status == "pending" and d.next_attempt_at - clock.now.timestamp() == pytest.approx(120, abs=0.5)


@respx.mock
def test_4xx_dead_letters_without_retry_and_replay_revives(world):
    engine, clock, worker = world
    route = respx.post(HOOK).mock(side_effect=[httpx.Response(400), httpx.Response(200)])
    asyncio.run(worker.run_once())
    d = delivery(engine)
    assert d.status == "dead" and "400" in (d.last_error or "")
    assert replay(engine, delivery_id=d.id) == 1
    asyncio.run(worker.run_once())
    assert delivery(engine).status == "delivered"
    assert route.call_count == 2


@respx.mock
def test_exhausted_retries_dead_letter(world):
    engine, clock, worker = world
    respx.post(HOOK).mock(return_value=httpx.Response(500))
    for _ in range(3):
        asyncio.run(worker.run_once())
        clock.now += timedelta(hours=1)
    d = delivery(engine)
    assert d.status == "dead" and "gave up after 3 attempts" in (d.last_error or "")
