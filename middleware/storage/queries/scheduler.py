"""The scheduler's statements: claim due triggers (``FOR UPDATE SKIP LOCKED`` on PostgreSQL),
count what each patient was sent lately (caps), mark triggers fired or suppressed and create
their deliveries: a few statements per batch (``executemany`` for the writes)."""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import case, func, insert, select, update

from ..sql import UnitOfWork, any_of, param, query
from ..statuses import DeliveryStatus, TriggerStatus
from ._tables import DELIVERY, PATIENT, TRIGGER

_T = TRIGGER.c


class DueTrigger(NamedTuple):
    """The claimed columns of a due trigger: all that the fire-time checks and the deliveries'
    idempotency keys read."""

    id: int
    rule_id: str
    name: str
    purpose: str
    destinations: str
    patient_key: str | None
    resource_key: str | None
    resource_version: str | None
    dedup_key: str | None
    message_kind: str | None
    flag: str | None  # kept on data that could not be re-checked (rules/recheck.py): why


class FiredCount(NamedTuple):
    """Triggers fired to a patient by one rule for one message kind: in the last 24 hours, in 7 days."""

    patient_key: str
    rule_id: str
    message_kind: str | None
    day: int | None
    week: int


class FiredTime(NamedTuple):
    """A trigger fired to a patient lately, with its time (calendar caps count it by local date)."""

    patient_key: str
    rule_id: str
    message_kind: str | None
    fired_at: float | None


query("scheduler.fired_times",
      select(_T.patient_key, _T.rule_id, _T.message_kind, _T.fired_at)
      .where(any_of(_T.patient_key, "pks"), _T.status == TriggerStatus.FIRED, _T.fired_at >= param("since")), FiredTime)
query("scheduler.patient_resources", select(PATIENT.c.key, PATIENT.c.resource).where(any_of(PATIENT.c.key, "pks")))
query("scheduler.next_due", select(func.min(_T.due_at)).where(_T.status == TriggerStatus.PENDING))
query("scheduler.any_due", select(_T.id).where(_T.status == TriggerStatus.PENDING, _T.due_at <= param("now")).limit(1))
query("scheduler.claim",
      select(_T.id, _T.rule_id, _T.name, _T.purpose, _T.destinations, _T.patient_key, _T.resource_key,
             _T.resource_version, _T.dedup_key, _T.message_kind, _T.flag)
      .where(_T.status == TriggerStatus.PENDING, _T.due_at <= param("now")).order_by(_T.due_at).limit(param("limit"))
      .with_for_update(skip_locked=True),  # PostgreSQL only: SQLite renders no locking clause
      DueTrigger)
query("scheduler.fired_counts",
      select(_T.patient_key, _T.rule_id, _T.message_kind,
             func.sum(case((_T.fired_at >= param("day_from"), 1), else_=0)), func.count())
      .where(any_of(_T.patient_key, "pks"), _T.status == TriggerStatus.FIRED, _T.fired_at >= param("week_from"))
      .group_by(_T.patient_key, _T.rule_id, _T.message_kind), FiredCount)
query("scheduler.mark_fired", update(TRIGGER).where(_T.id == param("t_id")).values(
    status=TriggerStatus.FIRED, fired_at=param("t_now"), updated_at=param("t_now")))
query("scheduler.mark_suppressed", update(TRIGGER).where(_T.id == param("t_id")).values(
    status=TriggerStatus.SUPPRESSED, reason=param("t_reason"), updated_at=param("t_now")))
query("scheduler.delivery_add", insert(DELIVERY).values(
    trigger_id=param("trigger_id"), destination=param("destination"), idempotency_key=param("idempotency_key"),
    status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=param("now"), created_at=param("now"),
    updated_at=param("now")))


def next_due(u: UnitOfWork) -> float | None:
    value: float | None = u.scalar("scheduler.next_due")
    return value


def any_due(u: UnitOfWork, now: float) -> bool:
    """Is a pending trigger due at ``now`` (one index probe; a read, no lock)?"""
    return u.scalar("scheduler.any_due", now=now) is not None


def claim(u: UnitOfWork, now: float, limit: int) -> list[DueTrigger]:
    rows: list[DueTrigger] = u.all("scheduler.claim", now=now, limit=limit)
    return rows


def fired_counts(u: UnitOfWork, keys: list[str], *, day_from: float, week_from: float) -> list[FiredCount]:
    rows: list[FiredCount] = u.all("scheduler.fired_counts", pks=keys, day_from=day_from, week_from=week_from)
    return rows


def fired_times(u: UnitOfWork, keys: list[str], *, since: float) -> list[FiredTime]:
    rows: list[FiredTime] = u.all("scheduler.fired_times", pks=keys, since=since)
    return rows


def patient_resources(u: UnitOfWork, keys: list[str]) -> list[tuple[str, str]]:
    """(key, stored Patient JSON) of the keys that have one."""
    return [(k, r) for k, r in u.all("scheduler.patient_resources", pks=keys)]


def record(u: UnitOfWork, *, fired: list[dict[str, Any]], suppressed: list[dict[str, Any]],
           deliveries: list[dict[str, Any]]) -> None:
    """``fired``: ``{t_id, t_now}``; ``suppressed``: ``{t_id, t_reason, t_now}``; ``deliveries``:
    ``{trigger_id, destination, idempotency_key, now}``."""
    u.many("scheduler.mark_fired", fired)
    u.many("scheduler.mark_suppressed", suppressed)
    u.many("scheduler.delivery_add", deliveries)
