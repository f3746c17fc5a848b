"""Queries of ``careloop reprocess`` (the stored events it replays, the inbound messages it
requeues, the plan of what it created, moved and cancelled) and of a reload's
``on_rule_change`` (the pending triggers of a changed rule)."""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Float, String, cast, func, or_, select

from ..sql import UnitOfWork, any_of, param, query
from ..statuses import InboundStatus, TriggerStatus
from ._tables import EVENT, INBOUND, TRIGGER
from .ingest import EventRecord

_T = TRIGGER.c
_E = EVENT.c
_I = INBOUND.c


class PlanRow(NamedTuple):
    id: int
    rule_id: str
    event_id: int | None
    patient_key: str | None
    due_at: float
    status: str
    reason: str | None
    destinations: str


class CarePlanEvent(NamedTuple):
    id: int
    source: str
    resource: str


class RuleTrigger(NamedTuple):
    """A pending trigger of a changed rule: what ``on_rule_change`` may rewrite."""

    id: int
    rule_id: str
    event_id: int | None
    status: str
    reason: str | None
    due_at: float
    payload: str
    ruleset_version: str
    explain: str | None


def _unless_null(name: str, type_: Any, cond: Any) -> Any:
    """``cond`` when the parameter ``name`` is given, always true when it is None."""
    return or_(cast(param(name), type_).is_(None), cond)


def _window(col: Any) -> list[Any]:
    """The optional ``since`` (inclusive) / ``until`` (exclusive) epoch bounds on ``col``."""
    return [_unless_null("since", Float, col >= param("since")), _unless_null("until", Float, col < param("until"))]


def _of_source(col: Any) -> Any:
    return _unless_null("source", String, col == param("source"))


PLAN_ROWS = query("replay.plan_rows", select(_T.id, _T.rule_id, _T.event_id, _T.patient_key, _T.due_at, _T.status,
                                             _T.reason, _T.destinations).where(any_of(_T.id, "ids")), PlanRow)
MAX_TRIGGER_ID = query("replay.max_trigger_id", select(func.coalesce(func.max(_T.id), 0)))

_EVENT_COLUMNS = [_E[name] for name in EventRecord._fields]
EVENTS_PAGE = query("replay.events_page", select(*_EVENT_COLUMNS).where(
    _E.id > param("after"), _E.type != "patient.merged", *_window(_E.occurred_at), _of_source(_E.source))
    .order_by(_E.id).limit(param("n")), EventRecord)
CAREPLAN_PAGE = query("replay.careplan_page", select(_E.id, _E.source, _E.resource).where(
    _E.id > param("after"), _E.resource_type == "CarePlan", *_window(_E.occurred_at), _of_source(_E.source))
    .order_by(_E.id).limit(param("n")), CarePlanEvent)
EVENT_BY_ID = query("replay.event", select(*_EVENT_COLUMNS).where(_E.id == param("id")), EventRecord)
EVENT_COUNT = query("replay.event_count", select(func.count()).select_from(EVENT).where(_of_source(_E.source)))

_REQUEUE = [_I.status.in_((InboundStatus.FAILED, InboundStatus.IGNORED)), *_window(_I.received_at), _of_source(_I.source)]
INBOUND_TO_REQUEUE = query("replay.inbound_to_requeue", select(func.count()).select_from(INBOUND).where(*_REQUEUE))
INBOUND_REQUEUE = query("replay.inbound_requeue", INBOUND.update().where(*_REQUEUE)
                        .values(status=InboundStatus.RECEIVED, error=None))

RULE_PENDING = query("replay.rule_pending", select(*(_T[name] for name in RuleTrigger._fields)).where(
    _T.rule_id == param("rule_id"), _T.status == TriggerStatus.PENDING, _T.id > param("after"))
    .order_by(_T.id).limit(param("n")), RuleTrigger)
TRIGGER_REWRITE = query("replay.trigger_rewrite", TRIGGER.update().where(_T.id == param("id")).values(
    {name: param(name) for name in ("status", "reason", "due_at", "payload", "ruleset_version", "explain", "updated_at")}))


def _bounds(since: float | None, until: float | None, source: str | None) -> dict[str, Any]:
    return {"since": since, "until": until, "source": source}


def events_page(u: UnitOfWork, after: int, n: int, *, since: float | None, until: float | None,
                source: str | None) -> list[EventRecord]:
    """Up to ``n`` stored events after id ``after`` (merges excluded), oldest first."""
    rows: list[EventRecord] = u.all(EVENTS_PAGE, after=after, n=n, **_bounds(since, until, source))
    return rows


def careplan_page(u: UnitOfWork, after: int, n: int, *, since: float | None, until: float | None,
                  source: str | None) -> list[CarePlanEvent]:
    rows: list[CarePlanEvent] = u.all(CAREPLAN_PAGE, after=after, n=n, **_bounds(since, until, source))
    return rows


def event(u: UnitOfWork, event_id: int) -> EventRecord | None:
    row: EventRecord | None = u.one(EVENT_BY_ID, id=event_id)
    return row


def event_count(u: UnitOfWork, source: str | None) -> int:
    return int(u.scalar(EVENT_COUNT, source=source) or 0)


def inbound_to_requeue(u: UnitOfWork, *, since: float | None, until: float | None, source: str | None) -> int:
    return int(u.scalar(INBOUND_TO_REQUEUE, **_bounds(since, until, source)) or 0)


def requeue_inbound(u: UnitOfWork, *, since: float | None, until: float | None, source: str | None) -> int:
    """Mark failed / ignored inbound messages ``received`` again (error cleared); how many."""
    return u.run(INBOUND_REQUEUE, **_bounds(since, until, source))


def rule_pending(u: UnitOfWork, rule_id: str, after: int, n: int) -> list[RuleTrigger]:
    rows: list[RuleTrigger] = u.all(RULE_PENDING, rule_id=rule_id, after=after, n=n)
    return rows


def rewrite_trigger(u: UnitOfWork, t: RuleTrigger, updated_at: float) -> None:
    """Store ``t``'s status, reason, due time, payload, rule set version and explanation."""
    u.run(TRIGGER_REWRITE, id=t.id, status=str(t.status), reason=t.reason, due_at=t.due_at, payload=t.payload,
          ruleset_version=t.ruleset_version, explain=t.explain, updated_at=updated_at)
