"""Replaying stored events through the current rules, and what a reload does to the
pending triggers of changed rules.

* :func:`reprocess` (``careloop reprocess``): stored events of a time range / source
  go through the current rules again (optionally only some rules). A trigger's
  ``origin_key`` is ``<rule>|event:<id>``, unique in the table, so a replay never
  doubles a trigger already created; cancellations during a replay touch only the
  triggers the replay itself created.
* :func:`apply_rule_changes` (``Runtime.reload``): per rule, ``on_rule_change``
  decides what happens to its pending triggers: ``keep`` (default), ``reevaluate``
  (evaluate the originating event again with the new rule: move, update or drop), or
  ``cancel``. A removed rule's pending triggers follow its old policy, except that
  ``reevaluate`` cancels them (there is nothing to evaluate).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ..model import ClinicalEvent
from ..rules.evaluate import evaluate
from ..rules.load import RuleSet
from ..scheduler.patientctx import hospice_for
from ..storage.tables import EventRow, InboundMessage, TriggerRow
from ..storage.sql import joined
from ..storage.statuses import InboundStatus, TriggerStatus
from .changes import ChangeResult, dumps, load_patient, on_event

log = logging.getLogger("careloop.replay")


def event_from_row(row: EventRow) -> ClinicalEvent:
    """The ClinicalEvent a stored event row was (``%previous`` is not stored: empty)."""
    return ClinicalEvent(
        type=row.type, previous_status=row.previous_status, status=row.status, resource_type=row.resource_type,
        resource_key=row.resource_key, patient_key=row.patient_key, resource=orjson.loads(row.resource), previous=None,
        source=row.source, arrival=row.arrival, occurred_at=datetime.fromtimestamp(row.occurred_at, tz=timezone.utc),
    )


@dataclass
class ReplayReport:
    events: int = 0
    triggers: int = 0
    cancelled: int = 0
    inbound_requeued: int = 0
    created_ids: set[int] = field(default_factory=set)


def reprocess(
    engine: Engine, rs: RuleSet, *, now: datetime, since: datetime | None = None, until: datetime | None = None,
    source: str | None = None, rules: set[str] | None = None, batch: int = 500,
) -> ReplayReport:
    """Replay stored events (oldest first, in batches) through the current rules."""
    rep = ReplayReport()
    last_id = 0
    while True:
        with Session(engine, expire_on_commit=False) as s:
            stmt = select(EventRow).where(col(EventRow.id) > last_id, EventRow.type != "patient.merged")
            if since:
                stmt = stmt.where(EventRow.occurred_at >= since.timestamp())
            if until:
                stmt = stmt.where(EventRow.occurred_at < until.timestamp())
            if source:
                stmt = stmt.where(EventRow.source == source)
            rows = list(s.exec(stmt.order_by(col(EventRow.id)).limit(batch)))
            if not rows:
                return rep
            u = joined(s)
            for row in rows:
                ev = event_from_row(row)
                result = ChangeResult()
                row_source = rs.sources.get(row.source)
                zone = row_source.hl7.timezone if row_source else None
                on_event(u, ev, row, rs, now=now, patient=load_patient(u, ev.patient_key), source_zone=zone,
                         result=result, only=rules, cancel_only_ids=rep.created_ids)
                rep.events += 1
                rep.triggers += result.triggers
                rep.cancelled += result.cancelled
                last_id = row.id or last_id
            s.commit()


def requeue_inbound(engine: Engine, *, since: datetime | None = None, until: datetime | None = None,
                    source: str | None = None) -> int:
    """Mark stored inbound messages that failed or were ignored as ``received`` again, so
    the processor maps them with the current mappings. Returns how many."""
    with Session(engine) as s:
        stmt = select(InboundMessage).where(col(InboundMessage.status).in_((InboundStatus.FAILED, InboundStatus.IGNORED)))
        if since:
            stmt = stmt.where(InboundMessage.received_at >= since.timestamp())
        if until:
            stmt = stmt.where(InboundMessage.received_at < until.timestamp())
        if source:
            stmt = stmt.where(InboundMessage.source == source)
        n = 0
        for msg in s.exec(stmt):
            msg.status, msg.error = InboundStatus.RECEIVED, None
            s.add(msg)
            n += 1
        s.commit()
    return n


def changed_rules(old: RuleSet, new: RuleSet) -> dict[str, tuple[str, str]]:
    """rule id -> (policy, what changed) for every rule that changed or disappeared."""
    out: dict[str, tuple[str, str]] = {}
    for cr in old.rules:
        now_cr = new.rule(cr.id)
        if now_cr is None:
            policy = cr.rule.on_rule_change
            out[cr.id] = ("cancel" if policy == "reevaluate" else policy, "removed")
        elif now_cr.rule != cr.rule:
            out[cr.id] = (now_cr.rule.on_rule_change, "changed")
    return out


def apply_rule_changes(engine: Engine, old: RuleSet, new: RuleSet, now: datetime, batch: int = 500) -> dict[str, int]:
    """Apply each changed rule's ``on_rule_change`` to its pending triggers; return counts per rule."""
    counts: dict[str, int] = {}
    nowts = now.timestamp()
    for rule_id, (policy, what) in changed_rules(old, new).items():
        if policy == "keep":
            continue
        n, last = 0, 0
        while True:
            with Session(engine, expire_on_commit=False) as s:
                rows = list(s.exec(select(TriggerRow).where(
                    TriggerRow.rule_id == rule_id, TriggerRow.status == TriggerStatus.PENDING, col(TriggerRow.id) > last,
                ).order_by(col(TriggerRow.id)).limit(batch)))
                if not rows:
                    break
                for t in rows:
                    last = t.id or last
                    note = f"rule {what} on reload ({old.version} -> {new.version}), on_rule_change: {policy}"
                    if policy == "cancel":
                        t.status, t.reason = TriggerStatus.CANCELLED, note
                    else:
                        _reevaluate(s, t, new, now, note)
                    t.updated_at = nowts
                    s.add(t)
                    n += 1
                s.commit()
        counts[rule_id] = n
        log.info("pending triggers after a rule change", extra={"action": "mappings.rule_changed", "rule_id": rule_id,
                                                                "policy": policy, "count": n})
    return counts


def _reevaluate(s: Session, t: TriggerRow, rs: RuleSet, now: datetime, note: str) -> None:
    row = s.get(EventRow, t.event_id) if t.event_id else None
    if row is None:
        t.status, t.reason = TriggerStatus.CANCELLED, f"{note}: originating event not found"
        return
    ev = event_from_row(row)
    src = rs.sources.get(row.source)
    u = joined(s)
    decisions = evaluate(ev, rs, now=now, patient=load_patient(u, ev.patient_key), hospice=hospice_for(u, ev.patient_key, rs),
                         source_zone=src.hl7.timezone if src else None, only={t.rule_id})
    d = decisions[0] if decisions else None
    if d is None or not d.fired:
        t.status, t.reason = TriggerStatus.CANCELLED, f"{note}: no longer applies ({d.reason if d else 'event no longer listened to'})"
    elif d.status != TriggerStatus.PENDING:
        t.status, t.reason = d.status or TriggerStatus.SKIPPED, f"{note}: {d.reason}"
    else:
        t.due_at = d.due_at.timestamp() if d.due_at else now.timestamp()
        t.payload, t.ruleset_version, t.explain = dumps(d.payload), rs.version, dumps(d.steps)
        t.reason = f"{note}: {d.reason}"
