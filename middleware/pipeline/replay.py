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
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from ..model import ClinicalEvent
from ..rules.evaluate import evaluate
from ..rules.load import RuleSet
from ..scheduler.patientctx import hospice_for
from ..storage.db import make_engine
from ..storage.schema import sqlite_file, vacuum_into
from ..storage.queries import replay as rq
from ..storage.queries.ingest import EventRecord
from ..storage.sql import UnitOfWork, unit
from ..storage.statuses import TriggerStatus
from .changes import ChangeResult, dumps, load_patient, on_event
from .conditions import ConditionResolver

log = logging.getLogger("careloop.replay")


def event_from_row(row: EventRecord, conditions: ConditionResolver | None = None,
                   base_url: str | None = None) -> ClinicalEvent:
    """The ClinicalEvent a stored event row was (``%previous`` is not stored: empty). A CarePlan's
    ``%conditions`` come from ``conditions`` (already prefetched), else from contained ones only."""
    resource = orjson.loads(row.resource)
    conds = (conditions.lookup(row.source, resource, base_url)
             if conditions is not None and row.resource_type == "CarePlan" else None)
    return ClinicalEvent(
        type=row.type, previous_status=row.previous_status, status=row.status, resource_type=row.resource_type,
        resource_key=row.resource_key, patient_key=row.patient_key, resource=resource, previous=None,
        source=row.source, arrival=row.arrival, occurred_at=datetime.fromtimestamp(row.occurred_at, tz=timezone.utc),
        conditions=conds,
    )


def prefetch_conditions(engine: Engine, rs: RuleSet, resolver: ConditionResolver, *, since: datetime | None = None,
                        until: datetime | None = None, source: str | None = None) -> int:
    """Read (network, outside any write transaction) the Conditions of the stored CarePlan events
    a replay will see; return how many plans were looked at."""
    n, last = 0, 0
    while True:
        with unit(engine) as u:
            rows = rq.careplan_page(u, last, 500, **_bounds(since, until, source))
        if not rows:
            return n
        for eid, src, body in rows:
            last = eid or last
            plan = orjson.loads(body)
            if plan.get("addresses"):
                src_cfg = rs.sources.get(src)
                resolver.prefetch(src, plan, src_cfg.fhir.version if src_cfg else "R4")
                n += 1


@dataclass
class Planned:
    """One trigger a replay creates or changes, as a preview lists it (no PHI: the CLI shows
    the patient only as a pseudonymous contact key)."""

    what: str  # create | move | cancel
    rule_id: str
    trigger_id: int | None  # None for a trigger a preview would create (its id is not kept)
    event_id: int | None
    patient_key: str | None
    due_at: float | None
    status: str  # the trigger's status after the replay
    reason: str | None
    destinations: list[str]
    sends_now: bool  # pending and already due: the worker sends it at once


@dataclass
class ReplayReport:
    events: int = 0
    triggers: int = 0
    cancelled: int = 0
    inbound_requeued: int = 0
    applied: bool = True
    created_ids: set[int] = field(default_factory=set)
    planned: list[Planned] = field(default_factory=list)

    def count(self, what: str, *, sends_now: bool | None = None) -> int:
        return sum(1 for p in self.planned if p.what == what and (sends_now is None or p.sends_now == sends_now))


def _bounds(since: datetime | None, until: datetime | None, source: str | None) -> dict[str, Any]:
    """The optional filters as the replay queries take them (a falsy value is no filter)."""
    return {"since": since.timestamp() if since else None, "until": until.timestamp() if until else None,
            "source": source or None}


def _rows(u: UnitOfWork, ids: list[int]) -> dict[int, tuple[Any, ...]]:
    out: dict[int, tuple[Any, ...]] = {}
    for i in range(0, len(ids), 500):
        out.update({int(r.id): tuple(r) for r in u.all(rq.PLAN_ROWS, ids=ids[i:i + 500])})
    return out


def reprocess(
    engine: Engine, rs: RuleSet, *, now: datetime, since: datetime | None = None, until: datetime | None = None,
    source: str | None = None, rules: set[str] | None = None, batch: int = 500, apply: bool = True,
    conditions: ConditionResolver | None = None,
) -> ReplayReport:
    """Replay stored events (oldest first, in batches) through the current rules.

    ``apply=False`` is a preview: nothing is written to the database (and so nothing can be
    sent); ``planned`` lists what the replay would create, move and cancel. On a SQLite file the
    preview replays on a ``VACUUM INTO`` copy in a temporary folder (a read; a running careloop
    keeps writing meanwhile) that is deleted afterwards; elsewhere it runs in one transaction
    that is rolled back. ``conditions``: CarePlan ``%conditions`` are read from the FHIR sources
    first (:func:`prefetch_conditions`)."""
    if conditions is not None:
        prefetch_conditions(engine, rs, conditions, since=since, until=until, source=source)
    if not apply and sqlite_file(engine) is not None:
        with tempfile.TemporaryDirectory(prefix="careloop-preview-") as tmp:
            copy = Path(tmp) / "preview.db"
            vacuum_into(engine, copy)
            scratch = make_engine(f"sqlite:///{copy}", synchronous="OFF")
            try:
                rep = _replay(scratch, rs, now=now, since=since, until=until, source=source, rules=rules, batch=batch,
                              commit=True, conditions=conditions)
            finally:
                scratch.dispose()
        rep.applied = False
        return rep
    return _replay(engine, rs, now=now, since=since, until=until, source=source, rules=rules, batch=batch,
                   commit=apply, conditions=conditions)


def _replay(engine: Engine, rs: RuleSet, *, now: datetime, since: datetime | None, until: datetime | None,
            source: str | None, rules: set[str] | None, batch: int, commit: bool,
            conditions: ConditionResolver | None) -> ReplayReport:
    apply = commit
    rep = ReplayReport(applied=apply)
    last_id = 0
    with unit(engine) as r:
        first_new = int(r.scalar(rq.MAX_TRIGGER_ID) or 0) + 1
    before: dict[int, tuple[Any, ...]] = {}  # committed state of existing triggers the replay touched
    with unit(engine, write=True) as u:
        while True:
            rows = rq.events_page(u, last_id, batch, **_bounds(since, until, source))
            if not rows:
                break
            for row in rows:
                row_source = rs.sources.get(row.source)
                ev = event_from_row(row, conditions, row_source.fhir.base_url if row_source else None)
                result = ChangeResult()
                zone = row_source.hl7.timezone if row_source else None
                on_event(u, ev, row, rs, now=now, patient=load_patient(u, ev.patient_key), source_zone=zone,
                         result=result, only=rules, cancel_only_ids=rep.created_ids)
                rep.events += 1
                rep.triggers += result.triggers
                rep.cancelled += result.cancelled
                last_id = row.id or last_id
            old = sorted(i for i in rep.created_ids if i < first_new and i not in before)
            if old:  # what they were before this replay: read on another connection (committed state)
                with unit(engine) as other:
                    before.update(_rows(other, old))
            if apply:
                u.commit_and_continue()
        rep.planned = _plan(u, rep.created_ids, first_new, before, now)
        if not apply:
            u.rollback()
    return rep


def _plan(db: UnitOfWork, ids: set[int], first_new: int, before: dict[int, tuple[Any, ...]], now: datetime) -> list[Planned]:
    nowts = now.timestamp()
    out: list[Planned] = []
    for tid, (_, rule_id, event_id, patient_key, due_at, status, reason, dests) in sorted(_rows(db, sorted(ids)).items()):
        if tid >= first_new:
            what = "create"
        else:
            was = before.get(tid)
            if was is None or (was[5], was[4]) == (status, due_at):
                continue
            what = "move" if status == "pending" else "cancel"
        out.append(Planned(what=what, rule_id=rule_id, trigger_id=tid if what != "create" else None, event_id=event_id,
                           patient_key=patient_key, due_at=due_at, status=status, reason=reason,
                           destinations=[d for d in (dests or "").split(",") if d],
                           sends_now=status == "pending" and due_at is not None and due_at <= nowts))
    return out


def count_events(engine: Engine, source: str | None = None) -> int:
    """How many events are stored (all sources, or one)."""
    with unit(engine) as u:
        return rq.event_count(u, source or None)


def count_inbound_to_requeue(engine: Engine, *, since: datetime | None = None, until: datetime | None = None,
                             source: str | None = None) -> int:
    """How many inbound messages :func:`requeue_inbound` would mark ``received`` again."""
    with unit(engine) as u:
        return rq.inbound_to_requeue(u, **_bounds(since, until, source))


def requeue_inbound(engine: Engine, *, since: datetime | None = None, until: datetime | None = None,
                    source: str | None = None) -> int:
    """Mark stored inbound messages that failed or were ignored as ``received`` again, so
    the processor maps them with the current mappings. Returns how many."""
    with unit(engine, write=True) as u:
        return rq.requeue_inbound(u, **_bounds(since, until, source))


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
        note = f"rule {what} on reload ({old.version} -> {new.version}), on_rule_change: {policy}"
        while True:
            with unit(engine, write=True) as u:
                rows = rq.rule_pending(u, rule_id, last, batch)
                if not rows:
                    break
                for t in rows:
                    last = t.id or last
                    if policy == "cancel":
                        t = t._replace(status=TriggerStatus.CANCELLED, reason=note)
                    else:
                        t = _reevaluate(u, t, new, now, note)
                    rq.rewrite_trigger(u, t, nowts)
                    n += 1
        counts[rule_id] = n
        log.info("pending triggers after a rule change", extra={"action": "mappings.rule_changed", "rule_id": rule_id,
                                                                "policy": policy, "count": n})
    return counts


def _reevaluate(u: UnitOfWork, t: rq.RuleTrigger, rs: RuleSet, now: datetime, note: str) -> rq.RuleTrigger:
    """``t`` as the changed rule decides it now, from its originating event."""
    row = rq.event(u, t.event_id) if t.event_id else None
    if row is None:
        return t._replace(status=TriggerStatus.CANCELLED, reason=f"{note}: originating event not found")
    ev = event_from_row(row)
    src = rs.sources.get(row.source)
    decisions = evaluate(ev, rs, now=now, patient=load_patient(u, ev.patient_key), hospice=hospice_for(u, ev.patient_key, rs),
                         source_zone=src.hl7.timezone if src else None, only={t.rule_id})
    d = decisions[0] if decisions else None
    if d is not None and d.status == "unevaluable":  # not false: the trigger stays as it was
        return t._replace(reason=f"{note}: kept, {d.reason}")
    if d is None or not d.fired:
        return t._replace(status=TriggerStatus.CANCELLED,
                          reason=f"{note}: no longer applies ({d.reason if d else 'event no longer listened to'})")
    if d.status != TriggerStatus.PENDING:
        return t._replace(status=d.status or TriggerStatus.SKIPPED, reason=f"{note}: {d.reason}")
    return t._replace(due_at=d.due_at.timestamp() if d.due_at else now.timestamp(), payload=dumps(d.payload),
                      ruleset_version=rs.version, explain=dumps(d.steps), reason=f"{note}: {d.reason}")
