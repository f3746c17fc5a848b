"""The operator API's reads (``api/operator.py``): pages of messages, events, triggers and
deliveries, newest first, keyset-paginated (``before_id``), with optional equality filters bound
as NULL-able parameters (each page query compiles once); single rows by id; requeueing a message."""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Integer, String, Table, cast, func, or_, select, update

from ..sql import UnitOfWork, any_of, param, query
from ..statuses import InboundStatus
from ._tables import ATTEMPT, DELIVERY, EVENT, INBOUND, TRIGGER
from .ingest import EventRecord as EventRecord  # the one type of an event row (re-exported)


class MessageListed(NamedTuple):
    id: int
    source: str
    channel: str
    received_at: float
    message_type: str | None
    control_id: str | None
    status: str
    error: str | None
    processed_at: float | None
    size: int
    meta: str | None


class MessageRaw(NamedTuple):
    id: int
    raw: bytes | None
    ack: bytes | None


class TriggerRecord(NamedTuple):
    id: int
    rule_id: str
    ruleset_version: str
    name: str
    purpose: str
    destinations: str
    patient_key: str | None
    resource_key: str | None
    event_id: int | None
    status: str
    reason: str | None
    due_at: float
    created_at: float
    updated_at: float
    fired_at: float | None
    payload: str
    explain: str | None
    patient_id: str | None
    journey_id: str | None
    journey_step: int | None
    flag: str | None


class DeliveryRecord(NamedTuple):
    id: int
    trigger_id: int
    destination: str
    idempotency_key: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_status_code: int | None
    delivered_at: float | None
    kind: str  # entry | exit (issue 17)
    confirmation: str | None  # what the vendor's answer proves: accepted | pending | confirmed | unconfirmed


class AttemptDetail(NamedTuple):
    delivery_id: int
    at: float
    outcome: str
    status_code: int | None
    error: str | None
    duration_ms: float


def _columns(table: Table, row: type[Any]) -> list[Any]:
    return [table.c[name] for name in row._fields]


def _page(table: Table, columns: list[Any], filters: tuple[str, ...]) -> Any:
    """Newest first, ``limit`` rows older than ``before_id`` (NULL: from the newest), ``filters``
    equal to their parameters (NULL: any)."""
    conds = [or_(cast(param(f), String).is_(None), table.c[f] == param(f)) for f in filters]
    return (select(*columns)
            .where(*conds, or_(cast(param("before_id"), Integer).is_(None), table.c.id < param("before_id")))
            .order_by(table.c.id.desc()).limit(param("limit")))


_MESSAGE_COLUMNS = [*(INBOUND.c[f] for f in MessageListed._fields if f != "size" and f != "meta"),
                    func.coalesce(func.length(INBOUND.c.raw), 0).label("size"), INBOUND.c.meta]
query("operator.messages", _page(INBOUND, _MESSAGE_COLUMNS, ("status", "source")), MessageListed)
query("operator.message_raw", select(INBOUND.c.id, INBOUND.c.raw, INBOUND.c.ack).where(INBOUND.c.id == param("id")),
      MessageRaw)
query("operator.message_requeue", update(INBOUND).where(INBOUND.c.id == param("id"))
      .values(status=InboundStatus.RECEIVED, error=None))
query("operator.events", _page(EVENT, _columns(EVENT, EventRecord), ("type", "patient_key", "arrival")), EventRecord)
query("operator.triggers", _page(TRIGGER, _columns(TRIGGER, TriggerRecord), ("status", "rule_id", "patient_key")),
      TriggerRecord)
query("operator.trigger", select(*_columns(TRIGGER, TriggerRecord)).where(TRIGGER.c.id == param("id")), TriggerRecord)
query("operator.deliveries", _page(DELIVERY, _columns(DELIVERY, DeliveryRecord), ("status", "destination")),
      DeliveryRecord)
query("operator.attempts_of", select(*_columns(ATTEMPT, AttemptDetail)).where(any_of(ATTEMPT.c.delivery_id, "ids"))
      .order_by(ATTEMPT.c.id), AttemptDetail)


def messages(u: UnitOfWork, *, limit: int, before_id: int | None, status: str | None,
             source: str | None) -> list[MessageListed]:
    rows: list[MessageListed] = u.all("operator.messages", limit=limit, before_id=before_id or None, status=status,
                                      source=source)
    return rows


def message_raw(u: UnitOfWork, message_id: int) -> MessageRaw | None:
    row: MessageRaw | None = u.one("operator.message_raw", id=message_id)
    return row


def requeue_message(u: UnitOfWork, message_id: int) -> bool:
    """Mark a stored message to be processed again; False when there is no such message."""
    return u.run("operator.message_requeue", id=message_id) > 0


def events(u: UnitOfWork, *, limit: int, before_id: int | None, type: str | None, patient_key: str | None,
           arrival: str | None) -> list[EventRecord]:
    rows: list[EventRecord] = u.all("operator.events", limit=limit, before_id=before_id or None, type=type,
                                    patient_key=patient_key, arrival=arrival)
    return rows


def triggers(u: UnitOfWork, *, limit: int, before_id: int | None, status: str | None, rule_id: str | None,
             patient_key: str | None) -> list[TriggerRecord]:
    rows: list[TriggerRecord] = u.all("operator.triggers", limit=limit, before_id=before_id or None, status=status,
                                      rule_id=rule_id, patient_key=patient_key)
    return rows


def trigger(u: UnitOfWork, trigger_id: int) -> TriggerRecord | None:
    row: TriggerRecord | None = u.one("operator.trigger", id=trigger_id)
    return row


def deliveries(u: UnitOfWork, *, limit: int, before_id: int | None, status: str | None,
               destination: str | None) -> list[DeliveryRecord]:
    rows: list[DeliveryRecord] = u.all("operator.deliveries", limit=limit, before_id=before_id or None, status=status,
                                       destination=destination)
    return rows


def attempts_of(u: UnitOfWork, delivery_ids: list[int]) -> list[AttemptDetail]:
    rows: list[AttemptDetail] = u.all("operator.attempts_of", ids=delivery_ids) if delivery_ids else []
    return rows
