"""Outcome tracking inside the processing transaction: a journey entry's goal is opened
when its rule fires (or the patient is held out), and re-decided whenever an event that can
settle it is stored, and when its window closes. Everything is read by index (the entry's
patient, the event types its goal names), never by scanning.

Idempotent: an entry is keyed by goal, rule or journey, and origin resource (the unit is the
patient's journey entry: two reminders for one visit are one entry), and its outcome is a
pure function of the stored events (:mod:`middleware.outcomes.match`), so reprocessing,
reconciliation, backfill and late messages converge on the same answer.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from middleware.outcomes.engine import CompiledGoal, LaterEvent
from middleware.outcomes.holdout import Arm, assign
from middleware.outcomes.window import Window
from middleware.rules.goal import Holdout, period_of
from middleware.storage.queries import outcomes as q
from middleware.storage.sql import UnitOfWork


@dataclass
class GoalBook:
    """The loaded rule set's goals, compiled once per rule-set version."""

    goals: dict[str, CompiledGoal] = field(default_factory=dict)
    by_rule: dict[str, str] = field(default_factory=dict)  # rule id -> goal id
    holdouts: dict[str, Holdout] = field(default_factory=dict)  # rule id -> holdout
    experiments: dict[str, str] = field(default_factory=dict)  # rule id -> experiment id (a journey's steps share one)
    destinations: dict[str, str] = field(default_factory=dict)  # rule id -> its destinations as a trigger records them
    zone: str = "UTC"

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(t for g in self.goals.values() for t in g.event_types)

    @classmethod
    def from_ruleset(cls, rs: Any) -> "GoalBook":
        from middleware.rules.timing import make_calendar

        st = rs.settings
        cal = make_calendar(st.holiday_calendar, st.holidays)
        book = cls(zone=st.site_timezone)
        for cr in rs.rules:
            rule = cr.rule
            if rule.goal is None:
                continue
            if rule.goal.id not in book.goals:
                book.goals[rule.goal.id] = CompiledGoal(rule.goal, rs.valuesets, zone=st.site_timezone,
                                                        is_business_day=cal.is_business_day)
            book.by_rule[rule.id] = rule.goal.id
            book.destinations[rule.id] = ",".join(rule.emit.destinations)
            if rule.holdout is not None:
                book.holdouts[rule.id] = rule.holdout
                journey = getattr(cr, "journey", None)
                book.experiments[rule.id] = rule.holdout.experiment or (journey.journey_id if journey else rule.id)
        return book


def holdout_key(secret: str) -> bytes:
    """The holdout HMAC key, derived from a careloop secret with its own label."""
    return hmac.new(secret.encode(), b"careloop holdout assignment v1", hashlib.sha256).digest()


def arm_for(u: UnitOfWork, key: bytes, patient_id: str, experiment: str, period: str, share: float,
            now: float) -> Arm:
    """The persisted arm of this patient in this experiment period (assigned on first sight)."""
    got = u.scalar(q.ARM.name, experiment=experiment, period=period, patient_id=patient_id)
    if got is None:
        arm = assign(key, patient_id, experiment, period, share)
        u.run(q.ASSIGN.name, experiment=experiment, period=period, patient_id=patient_id, arm=arm.value,
              share=share, now=now)
        got = u.scalar(q.ARM.name, experiment=experiment, period=period, patient_id=patient_id)
    return Arm(got)


def experiment_period(h: Holdout, rule_id: str, at: datetime, zone: str) -> tuple[str, str]:
    local = at.astimezone(ZoneInfo(zone))
    return h.experiment or rule_id, period_of(h.period, local.year, local.month)


def calendar_period(anchor: datetime, zone: str) -> tuple[str, str]:
    """The anchor's local month ("2026-11") and ISO week ("2026-W47"), the report's calendar breakdowns."""
    local = anchor.astimezone(ZoneInfo(zone))
    year, week, _ = local.isocalendar()
    return f"{local.year:04d}-{local.month:02d}", f"{year:04d}-W{week:02d}"


def open_entry(u: UnitOfWork, book: GoalBook, *, rule_id: str, ruleset_version: str | None, patient_key: str | None,
               patient_id: str | None, origin_event_id: int | None, origin: dict[str, Any], origin_key: str,
               trigger_id: int | None, now: datetime, journey_id: str | None = None,
               arm: Arm | None = None, experiment: str | None = None, period: str | None = None,
               recorded: datetime | None = None, opened: set[str] | None = None) -> bool:
    """Record a journey entry's goal (once); decide it at once from events already stored.

    ``opened``: the entry keys this unit of work has already sent for the same event. Rules sharing
    a goal (the 72 h and 24 h reminders of one visit) fire together and name one entry; the second
    INSERT could only hit the first's row (``ON CONFLICT DO NOTHING``), so it is not sent (issue 16)."""
    goal_id = book.by_rule.get(rule_id)
    if goal_id is None:
        return False
    goal = book.goals[goal_id]
    got = goal.window_for(origin, recorded)
    anchor_at = opens = closes = None
    month = week = None
    if got is not None:
        anchor_at, opens, closes = got[0].timestamp(), got[1].opens.timestamp(), got[1].closes.timestamp()
        month, week = calendar_period(got[0], book.zone)
    # the unit is the patient's journey entry: rules sharing a goal (the 72 h and 24 h reminders
    # of one visit) make one entry per origin resource; a journey's steps make one per journey
    entry_key = f"{goal_id}|{journey_id or '-'}|{origin_key}"
    if opened is not None:
        if entry_key in opened:
            return True
        opened.add(entry_key)
    u.send(q.OPEN_ENTRY, entry_key=entry_key, goal_id=goal_id, rule_id=rule_id, journey_id=journey_id,
                    ruleset_version=ruleset_version, patient_key=patient_key, patient_id=patient_id,
                    origin_event_id=origin_event_id, origin_resource_key=origin_key, trigger_id=trigger_id,
                    experiment=experiment, period=period, arm=arm.value if arm else None,
                    anchor_at=anchor_at, window_opens=opens, window_closes=closes,
                    destination=book.destinations.get(rule_id), anchor_month=month, anchor_week=week, now=now.timestamp())
    # Not decided here: events stored later settle it (after_event_rows), and an event stored
    # before the entry (an out-of-order message) is found when its window closes (close_due).
    return True


def _settle(u: UnitOfWork, book: GoalBook, entries: list[q.OpenEntry], patient_key: str, now: datetime) -> int:
    todo = [(e, book.goals[e.goal_id]) for e in entries if e.goal_id in book.goals and e.origin_event_id is not None]
    if not todo:
        return 0  # a goal no longer in the rule set keeps its last decision
    type_sets = sorted({tuple(sorted(g.event_types)) for _, g in todo})
    # every origin resource and the patient's events of every goal's types: one round trip (pipeline mode)
    got = u.fetch(*[(q.ORIGIN_RESOURCE, {"id": e.origin_event_id}) for e, _ in todo],
                  *[(q.PATIENT_EVENTS, {"patient_key": patient_key, "types": list(ts)}) for ts in type_sets])
    origins, event_rows = got[:len(todo)], dict(zip(type_sets, got[len(todo):]))
    changed = 0
    for (e, goal), origin_rows in zip(todo, origins):
        origin = orjson.loads(origin_rows[0][0]) if origin_rows and origin_rows[0][0] else {}
        recorded = datetime.fromtimestamp(origin_rows[0][1], UTC) if origin_rows and origin_rows[0][1] is not None else None
        later = [LaterEvent(r.id, r.type, r.resource_type, r.resource_key, orjson.loads(r.resource),
                            datetime.fromtimestamp(r.occurred_at, UTC))
                 for r in event_rows[tuple(sorted(goal.event_types))]]
        fixed = None
        if e.anchor_at is not None and e.window_opens is not None and e.window_closes is not None:
            fixed = (datetime.fromtimestamp(e.anchor_at, UTC),
                     Window(datetime.fromtimestamp(e.window_opens, UTC), datetime.fromtimestamp(e.window_closes, UTC)))
        result, _ = goal.decide_entry(origin, e.origin_resource_key or "", later, now, fixed, recorded)
        if result.outcome.value == e.status and result.event_id == e.event_id:
            continue
        u.send(q.SETTLE, id=e.id, status=result.outcome.value, event_id=result.event_id,
               achieved_at=result.at.timestamp() if result.at else None,
               elapsed_s=result.elapsed.total_seconds() if result.elapsed else None, now=now.timestamp())
        changed += 1
    return changed


def on_event(u: UnitOfWork, book: GoalBook, patient_key: str | None, event_type: str | None, now: datetime) -> int:
    """Re-decide this patient's entries whose goal names ``event_type`` (``None``: all of them).
    Settled entries are re-decided too: a late message can turn a ``missed`` into ``achieved``."""
    if not patient_key or not book.goals or (event_type is not None and event_type not in book.event_types):
        return 0
    entries = [e for e in u.all(q.FOR_PATIENT.name, patient_key=patient_key)
               if event_type is None or (e.goal_id in book.goals and event_type in book.goals[e.goal_id].event_types)]
    return _settle(u, book, entries, patient_key, now) if entries else 0


def close_due(u: UnitOfWork, book: GoalBook, now: datetime, limit: int = 500) -> int:
    """Settle pending entries whose window has closed (``missed`` unless an event says otherwise)."""
    rows = u.all(q.DUE_TO_CLOSE.name, now=now.timestamp(), limit=limit)
    n = 0
    by_patient: dict[str, list[q.OpenEntry]] = {}
    for r in rows:
        by_patient.setdefault(r.patient_key or "", []).append(r)
    for pk, entries in by_patient.items():
        n += _settle(u, book, entries, pk, now)  # no patient: no events, so the window's close decides
    return n


def mark_delivered(u: UnitOfWork, trigger_id: int, now: datetime) -> None:
    u.run(q.MARK_DELIVERED.name, trigger_id=trigger_id, now=now.timestamp())


_BOOKS: dict[str, GoalBook] = {}


def book_for(rs: Any) -> GoalBook:
    """The compiled goals of a rule set, built once per rule-set version."""
    book = _BOOKS.get(rs.version)
    if book is None:
        if len(_BOOKS) > 8:
            _BOOKS.clear()
        book = _BOOKS[rs.version] = GoalBook.from_ruleset(rs)
    return book


@dataclass(frozen=True)
class Assignment:
    arm: Arm | None = None
    experiment: str | None = None
    period: str | None = None

    @property
    def held_out(self) -> bool:
        return self.arm is Arm.HELD_OUT


def holdout_for(u: UnitOfWork, book: GoalBook, key: bytes, rule_id: str, patient_id: str | None,
                now: datetime) -> Assignment:
    """The arm of this patient for this rule's experiment period (no holdout: no arm). Without a
    patient there is nobody to hold out: treated."""
    h = book.holdouts.get(rule_id)
    if h is None:
        return Assignment()
    exp, period = experiment_period(h, book.experiments.get(rule_id, rule_id), now, book.zone)
    if not patient_id:
        return Assignment(Arm.TREATED, exp, period)
    return Assignment(arm_for(u, key, patient_id, exp, period, h.share, now.timestamp()), exp, period)


_HOLDOUT_KV = "outcomes.holdout_key"
_KEYS: dict[str, bytes] = {}


def holdout_key_for(u: UnitOfWork) -> bytes:
    """The holdout HMAC key of this database: 256 random bits made on first use and kept in
    ``kv`` (so replicas and restarts agree, and nobody can compute an arm from identifiers)."""
    from middleware.storage.queries.kv import KV_ADD, KV_GET

    url = str(u.engine.url)
    got = _KEYS.get(url)
    if got is not None:
        return got
    value = u.scalar(KV_GET, key=_HOLDOUT_KV)
    if value is None:
        import secrets
        import time

        u.run(KV_ADD, key=_HOLDOUT_KV, value=secrets.token_hex(32), updated_at=time.time())
        value = u.scalar(KV_GET, key=_HOLDOUT_KV)
        return bytes.fromhex(str(value))  # not cached until it is known to be committed
    key = _KEYS[url] = bytes.fromhex(str(value))
    return key


def before_trigger(u: UnitOfWork, rs: Any, rule_id: str, patient_id: str | None, now: datetime) -> Assignment:
    """Called by the pipeline for each fired decision: the arm of a rule with a holdout."""
    book = book_for(rs)
    if rule_id not in book.holdouts:
        return Assignment()
    return holdout_for(u, book, holdout_key_for(u), rule_id, patient_id, now)


def after_trigger(u: UnitOfWork, rs: Any, *, rule_id: str, journey_id: str | None, patient_key: str | None,
                  patient_id: str | None, event_id: int | None, origin: dict[str, Any], origin_key: str,
                  trigger_id: int | None, assignment: Assignment, now: datetime,
                  recorded: datetime | None = None, opened: set[str] | None = None) -> None:
    """Called by the pipeline after a fired decision was recorded (or held out): open its entry
    (``opened``: see :func:`open_entry`)."""
    book = book_for(rs)
    if rule_id not in book.by_rule:
        return
    open_entry(u, book, rule_id=rule_id, ruleset_version=rs.version, patient_key=patient_key, patient_id=patient_id,
               origin_event_id=event_id, origin=origin, origin_key=origin_key, trigger_id=trigger_id, now=now,
               journey_id=journey_id, arm=assignment.arm, experiment=assignment.experiment, period=assignment.period,
               recorded=recorded, opened=opened)


def entries_call(rs: Any, patient_key: str | None, event_type: str) -> tuple[Any, dict[str, Any]] | None:
    """The read of the patient's journey entries an event of ``event_type`` may settle, for the
    pipeline to send with the event's INSERT; None when no goal names that event type."""
    if rs is None or not patient_key:
        return None
    book = book_for(rs)
    if not book.goals or event_type not in book.event_types:
        return None
    return q.FOR_PATIENT, {"patient_key": patient_key}


def after_event_rows(u: UnitOfWork, rs: Any, patient_key: str | None, event_type: str, rows: list[Any],
                     now: datetime) -> int:
    """Re-decide the entries (read by :func:`entries_call`) whose goal names ``event_type``."""
    book = book_for(rs)
    entries = [e for e in rows if e.goal_id in book.goals and event_type in book.goals[e.goal_id].event_types]
    return _settle(u, book, entries, patient_key or "", now) if entries else 0


def after_event(u: UnitOfWork, rs: Any, patient_key: str | None, event_type: str, now: datetime) -> None:
    """:func:`entries_call` and :func:`after_event_rows` in two steps (callers outside the pipeline)."""
    call = entries_call(rs, patient_key, event_type)
    if call is not None:
        after_event_rows(u, rs, patient_key, event_type, u.all(call[0], **call[1]), now)


def close_windows(engine: Any, rs: Any, now: datetime, limit: int = 500) -> int:
    """One batch of :func:`close_due` in its own write transaction; the number settled."""
    from middleware.storage.sql import unit

    book = book_for(rs)
    if not book.goals:
        return 0
    with unit(engine, write=True) as u:
        return close_due(u, book, now, limit)
