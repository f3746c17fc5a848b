"""Scenario through the real pipeline with an injected clock: stored HL7 messages ->
Processor -> durable triggers -> Scheduler -> DeliveryWorker -> a real loopback webhook
receiver. A discharge without follow-up fires the 7-day visit outreach exactly at its
due time; a discharge followed by a booked visit cancels it before its due time."""
from __future__ import annotations

import asyncio
import hashlib
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

from middleware.delivery.signing import generate_secret
from middleware.delivery.sink import SinkServer
from middleware.delivery.worker import DeliveryWorker
from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.scheduler.runner import Scheduler
from middleware.storage.db import init_db, make_engine
from middleware.storage.tables import InboundMessage, TriggerRow

REPO = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")

DISCHARGE = (
    "MSH|^~\\&|ADT|HOSPA|CARELOOP|CL|20241108140000-0500||ADT^A03^ADT_A03|SC-1|P|2.5.1\r"
    "EVN||20241108140000-0500\r"
    "PID|1||MRN900^^^HOSPA^MR||SCENARIO^PATIENT||19500101|M\r"
    "PV1|1|I|4W^410^A^HOSPA|E|||||||||||||||V900^^^HOSPA^VN|||||||||||||||||01||||||||20241105090000-0500|20241108140000-0500\r"
)
BOOKED = (
    "MSH|^~\\&|SCH|HOSPA|CARELOOP|CL|20241109100000-0500||SIU^S12^SIU_S12|SC-2|P|2.5.1\r"
    "SCH|A900^SCH|A900^SCH||||||ROUTINE^Routine^HL70277||||||||||||||||Booked\r"
    "TQ1|1||||||20241112100000-0500|20241112103000-0500\r"
    "PID|1||MRN900^^^HOSPA^MR||SCENARIO^PATIENT||19500101|M\r"
    "RGS|1\r"
)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str):
    secret = generate_secret()
    # the signature timestamp follows the simulated clock, years from the real one
    with SinkServer([secret], tolerance_s=10**10) as sink:
        monkeypatch.setenv("CARELOOP_WEBHOOK_URL", sink.url + "/hooks")
        monkeypatch.setenv("CARELOOP_WEBHOOK_SECRET", secret)
        m = tmp_path / "mappings"
        shutil.copytree(REPO / "mappings", m)
        rs, diags = load_ruleset(m)
        assert rs is not None, [str(d) for d in diags]
        engine = make_engine(db_url)
        init_db(engine)
        clock = Clock(datetime(2024, 11, 8, 14, 5, tzinfo=NY))
        yield engine, rs, clock, sink
        engine.dispose()


def receive(engine, text: str, clock: Clock) -> None:
    raw = text.encode()
    with Session(engine) as s:
        s.add(InboundMessage(source="default", channel="mllp", received_at=clock().timestamp(), raw=raw,
                             sha256=hashlib.sha256(raw).hexdigest(), status="received"))
        s.commit()


def tick(engine, rs, clock: Clock) -> None:
    """One pass of each worker at the clock's current time."""
    Processor(engine, lambda: rs, clock=clock).drain()
    Scheduler(engine, lambda: rs, clock=clock).fire_due()
    worker = DeliveryWorker(engine, lambda: rs, contact_secret="scenario-contact-secret-0123456789", clock=clock)

    async def deliver() -> None:
        try:
            while await worker.run_once():
                pass
        finally:
            await worker.aclose()

    asyncio.run(deliver())


def trigger(engine, rule_id: str) -> TriggerRow:
    with Session(engine) as s:
        return s.exec(select(TriggerRow).where(TriggerRow.rule_id == rule_id)).one()


def hooks(sink: SinkServer, kind: str) -> list[dict]:
    return [r for r in sink.received() if r.get("type") == kind]


def test_discharge_without_follow_up_fires_at_the_due_time(world):
    engine, rs, clock, sink = world
    receive(engine, DISCHARGE, clock)
    tick(engine, rs, clock)
    assert len(hooks(sink, "post_discharge_contact")) == 1  # TCM contact task goes out at once
    t = trigger(engine, "tcm-visit-7d")
    # 2 business days (Monday 11-11 is Veterans Day) end 11-13 14:00; sent at the next 10:00 (when.at_time)
    due = datetime(2024, 11, 14, 10, 0, tzinfo=NY)
    assert t.status == "pending" and t.due_at == due.timestamp() and t.ruleset_version == rs.version
    clock.at = due - timedelta(minutes=1)
    tick(engine, rs, clock)
    assert trigger(engine, "tcm-visit-7d").status == "pending" and not hooks(sink, "post_discharge_visit_7d")
    clock.at = due
    tick(engine, rs, clock)
    assert trigger(engine, "tcm-visit-7d").status == "fired"
    [hook] = hooks(sink, "post_discharge_visit_7d")
    assert hook["verified"] is True
    clock.at = due + timedelta(days=3)
    tick(engine, rs, clock)  # a restart-like later pass never sends it again
    assert len(hooks(sink, "post_discharge_visit_7d")) == 1 and sink.duplicates() == 0


def test_booked_visit_cancels_the_outreach_before_its_due_time(world):
    engine, rs, clock, sink = world
    receive(engine, DISCHARGE, clock)
    tick(engine, rs, clock)
    assert trigger(engine, "tcm-visit-7d").status == "pending"
    clock.at = datetime(2024, 11, 9, 10, 0, tzinfo=NY)
    receive(engine, BOOKED, clock)
    Processor(engine, lambda: rs, clock=clock).drain()
    t = trigger(engine, "tcm-visit-7d")  # cancelled at once, long before 11-13 14:00
    assert t.status == "cancelled" and "appointment.booked" in (t.reason or "")
    assert t.due_at > clock().timestamp()
    clock.at = datetime(2024, 11, 25, 9, 0, tzinfo=NY)
    tick(engine, rs, clock)
    assert not hooks(sink, "post_discharge_visit_7d") and not hooks(sink, "post_discharge_visit_14d")
    assert datetime.now(timezone.utc) > clock.at  # the clock was simulated
