"""Issue 16: a trigger a processing batch makes due now fires in that batch's own transaction (one
write transaction, one commit and no scheduler wake-up per batch), with the scheduler's claim and
checks; the crash tests' fault points still come in order after the commit."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlmodel import Session

import middleware.scheduler.runner as runner_mod
from middleware.pipeline.process import Processor
from middleware.storage.tables import DeliveryRow, InboundMessage, TriggerRow
from support.delivery_pipeline import Clock, make_pipeline
from tests.scale.conftest import make_immediate
from tests.support.hl7msgs import siu


def _store(p: Any, payloads: list[bytes]) -> None:
    import hashlib

    with Session(p.engine) as s:
        for raw in payloads:
            s.add(InboundMessage(source="default", channel="mllp", received_at=p.clock().timestamp(), raw=raw,
                                 sha256=hashlib.sha256(raw).hexdigest(), status="received"))
        s.commit()


def test_a_trigger_due_now_fires_in_the_processing_transaction(mappings_dir: Path, db_url: str, monkeypatch: Any) -> None:
    p = make_pipeline(db_url, make_immediate(mappings_dir), clock=Clock(datetime.now(timezone.utc)))
    _store(p, [siu("S12", control="F1-B", appt="F1", mrn="MRN0900001"),
               siu("S26", control="F1-N", appt="F1", mrn="MRN0900001", status="Noshow")])
    woken: list[str] = []
    points: list[str] = []
    p.scheduler.on_deliveries = lambda: woken.append("deliver")
    p.scheduler.fault_hook = points.append
    proc = Processor(p.engine, p.ruleset, clock=p.clock, scheduler=p.scheduler, on_due=lambda: woken.append("schedule"))
    proc.fault_hook = points.append
    own: list[bool] = []  # the scheduler's own transactions
    real_unit = runner_mod.unit

    def counting_unit(engine: Any, write: bool = False, durable: bool = True) -> Any:
        own.append(write)
        return real_unit(engine, write=write, durable=durable)

    monkeypatch.setattr(runner_mod, "unit", counting_unit)
    assert proc.drain() == 2
    noshow = [t for t in p.rows(TriggerRow) if t.rule_id == "noshow-reengagement"]
    assert [t.status for t in noshow] == ["fired"]
    deliveries = p.rows(DeliveryRow)
    assert [d.trigger_id for d in deliveries] == [noshow[0].id]
    assert woken == ["deliver"]  # the delivery worker woken; the scheduler's loop had nothing left to fire
    assert own == []  # fired in the processing batch's transaction, none of its own
    # the fault points in order: the batch's commit, then the firing's (same commit), once
    assert points.count("scheduler.after_commit") == 1
    assert points[points.index("scheduler.after_commit") - 1] == "process.after_commit"
    assert p.scheduler.fired == 1
    assert p.scheduler.fire_due() == 0  # nothing left due: fired once


def test_without_a_scheduler_the_processor_wakes_one(mappings_dir: Path, db_url: str) -> None:
    p = make_pipeline(db_url, make_immediate(mappings_dir), clock=Clock(datetime.now(timezone.utc)))
    _store(p, [siu("S12", control="F2-B", appt="F2", mrn="MRN0900002"),
               siu("S26", control="F2-N", appt="F2", mrn="MRN0900002", status="Noshow")])
    woken: list[str] = []
    proc = Processor(p.engine, p.ruleset, clock=p.clock, on_due=lambda: woken.append("schedule"))
    assert proc.drain() == 2
    assert woken == ["schedule"]
    assert [t.status for t in p.rows(TriggerRow) if t.rule_id == "noshow-reengagement"] == ["pending"]
    assert p.scheduler.fire_due() >= 1
    assert len(p.rows(DeliveryRow)) == 1


def test_a_firing_error_leaves_the_batch_processed_and_wakes_the_scheduler(mappings_dir: Path, db_url: str) -> None:
    p = make_pipeline(db_url, make_immediate(mappings_dir), clock=Clock(datetime.now(timezone.utc)))
    _store(p, [siu("S12", control="F3-B", appt="F3", mrn="MRN0900003"),
               siu("S26", control="F3-N", appt="F3", mrn="MRN0900003", status="Noshow")])
    woken: list[str] = []

    def broken(u: Any, limit: int) -> Any:
        raise RuntimeError("firing broke")

    p.scheduler.fire_in = broken  # type: ignore[method-assign]
    proc = Processor(p.engine, p.ruleset, clock=p.clock, scheduler=p.scheduler, on_due=lambda: woken.append("schedule"))
    assert proc.drain() == 2
    assert {m.status for m in p.rows(InboundMessage)} == {"processed"}
    assert woken == ["schedule"]
    assert [t.status for t in p.rows(TriggerRow) if t.rule_id == "noshow-reengagement"] == ["pending"]


def test_a_backlog_of_due_triggers_is_left_to_the_scheduler_s_loop(mappings_dir: Path, db_url: str) -> None:
    """The batch fires at most 4 per message that made one due (oldest due first), then wakes the scheduler."""
    import orjson

    p = make_pipeline(db_url, make_immediate(mappings_dir), clock=Clock(datetime.now(timezone.utc)))
    now = p.clock().timestamp()
    with Session(p.engine) as s:  # ten triggers already due (e.g. a morning's scheduled reminders)
        for i in range(10):
            s.add(TriggerRow(rule_id="r1", ruleset_version="v1", name="reminder", purpose="treatment-reminder",
                             destinations="webhook", patient_key=f"urn:mrn|B{i}", origin_key=f"backlog{i}", due_at=now - 600 + i,
                             status="pending", payload=orjson.dumps({}).decode(), created_at=now, updated_at=now))
        s.commit()
    _store(p, [siu("S26", control="F4-N", appt="F4", mrn="MRN0900004", status="Noshow")])
    woken: list[str] = []
    proc = Processor(p.engine, p.ruleset, clock=p.clock, scheduler=p.scheduler, on_due=lambda: woken.append("schedule"))
    assert proc.run_once() == 1
    fired = sorted(t.origin_key for t in p.rows(TriggerRow) if t.status != "pending")
    assert fired == [f"backlog{i}" for i in range(4)]  # the four oldest due, in due order
    assert woken == ["schedule"]
    assert p.scheduler.fire_due() == 7  # the rest (six of the backlog and the no-show's) in the scheduler's own transaction
