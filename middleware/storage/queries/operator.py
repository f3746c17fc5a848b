"""The operator API's reads (``api/operator.py``): pages of messages, events, triggers and
deliveries, newest first, keyset-paginated (``before_id``), with optional equality filters bound
as NULL-able parameters (each page query compiles once); single rows by id; requeueing a message.

Messages are the exception: the message browser's page query is one statement per combination of
filters in use (:func:`messages`), because with 1,000,000 rows each filter must be an index range
the planner can see, and pages go both ways (``before_id`` older, ``after_id`` newer)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from sqlalchemy import Integer, String, Table, cast, func, or_, select, tuple_, update

from ..sql import Query, UnitOfWork, any_of, param, query
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


class MessageDetail(NamedTuple):
    """One stored message with its bytes and the ACK careloop answered it with."""

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
    raw: bytes | None
    ack: bytes | None
    attempts: int


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
#: equality filters of the message browser, in the order of the query name
MESSAGE_FILTERS = ("source", "message_type", "control_id", "status")


@dataclass(frozen=True)
class MessageFilter:
    """What the message browser (API and console) filters on: ids, types, statuses and times only
    (never an identifier), so a filter may appear in a URL."""

    source: str | None = None
    message_type: str | None = None
    control_id: str | None = None
    status: str | None = None
    since: float | None = None  # received_at >= since
    until: float | None = None  # received_at < until
    errored: bool = False  # error IS NOT NULL

    def used(self) -> tuple[str, ...]:
        names = [f for f in MESSAGE_FILTERS if getattr(self, f)]
        names += [f for f in ("since", "until") if getattr(self, f) is not None]
        return (*names, "errored") if self.errored else tuple(names)


_VARIANTS: dict[tuple[tuple[str, ...], bool], Query] = {}
_VARIANTS_LOCK = threading.Lock()


def _message_page(used: tuple[str, ...], newer: bool) -> Query:
    """The page query for one combination of filters (registered on first use, compiled once per
    dialect): only the filters in use appear in the statement, so each is an index range the planner
    can see (``(:p IS NULL OR col = :p)`` hides it), and keyset order is the primary key."""
    key = (used, newer)
    got = _VARIANTS.get(key)
    if got is not None:
        return got
    with _VARIANTS_LOCK:
        got = _VARIANTS.get(key)
        if got is None:
            c = INBOUND.c
            conds: list[Any] = [c[f] == param(f) for f in used if f in MESSAGE_FILTERS]
            if "since" in used:
                conds.append(c.received_at >= param("since"))
            if "until" in used:
                conds.append(c.received_at < param("until"))
            if "errored" in used:
                conds.append(c.error.is_not(None))
            if "since" in used or "until" in used:
                # a time range: pages in (received_at, id) order, an index range of ix_inbound_received
                # (which carries the row id), the cursor row's time read by its id
                at = select(c.received_at).where(c.id == param("after_id" if newer else "before_id")).scalar_subquery()
                row_key = tuple_(c.received_at, c.id)
                cursor = row_key > tuple_(at, param("after_id")) if newer else row_key < tuple_(
                    func.coalesce(at, 1e300), param("before_id"))
                order = [c.received_at.asc(), c.id.asc()] if newer else [c.received_at.desc(), c.id.desc()]
                bound = c.received_at >= at if newer else c.received_at <= func.coalesce(at, 1e300)  # an index bound
                stmt = select(*_MESSAGE_COLUMNS).where(*conds, bound, cursor).order_by(*order)
            elif newer:
                stmt = select(*_MESSAGE_COLUMNS).where(*conds, c.id > param("after_id")).order_by(c.id.asc())
            else:
                stmt = select(*_MESSAGE_COLUMNS).where(*conds, c.id < param("before_id")).order_by(c.id.desc())
            name = f"operator.messages[{','.join(used)}]{'.newer' if newer else ''}"
            got = _VARIANTS[key] = query(name, stmt.limit(param("limit")), MessageListed)
    return got


_message_page((), False)  # the unfiltered page, registered at import like every other query
query("operator.message_raw", select(INBOUND.c.id, INBOUND.c.raw, INBOUND.c.ack).where(INBOUND.c.id == param("id")),
      MessageRaw)
query("operator.message", select(*_MESSAGE_COLUMNS, INBOUND.c.raw, INBOUND.c.ack, INBOUND.c.attempts)
      .where(INBOUND.c.id == param("id")), MessageDetail)
query("operator.events_of_message", select(*_columns(EVENT, EventRecord)).where(EVENT.c.inbound_id == param("id"))
      .order_by(EVENT.c.id).limit(param("limit")), EventRecord)
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


#: larger than any id: "from the newest"
_NEWEST = 2**62


def messages(u: UnitOfWork, *, limit: int, before_id: int | None = None, after_id: int | None = None,
             status: str | None = None, source: str | None = None, where: MessageFilter | None = None) -> list[MessageListed]:
    """A page of stored messages, newest first: ``limit`` rows older than ``before_id`` (none: the
    newest), or, with ``after_id``, the ``limit`` rows just newer than it (still returned newest
    first). ``status``/``source`` are shorthands for ``where``. No count: keyset pages only."""
    f = where or MessageFilter()
    if status or source:
        f = replace(f, status=status or f.status, source=source or f.source)
    used = f.used()
    params: dict[str, Any] = {n: getattr(f, n) for n in used if n != "errored"}
    if after_id is not None:
        rows: list[MessageListed] = u.all(_message_page(used, True), limit=limit, after_id=after_id, **params)
        return rows[::-1]
    rows = u.all(_message_page(used, False), limit=limit, before_id=before_id or _NEWEST, **params)
    return rows


def message_raw(u: UnitOfWork, message_id: int) -> MessageRaw | None:
    row: MessageRaw | None = u.one("operator.message_raw", id=message_id)
    return row


def message(u: UnitOfWork, message_id: int) -> MessageDetail | None:
    row: MessageDetail | None = u.one("operator.message", id=message_id)
    return row


def events_of_message(u: UnitOfWork, message_id: int, limit: int = 200) -> list[EventRecord]:
    """The events a message produced (``event.inbound_id``), in order."""
    rows: list[EventRecord] = u.all("operator.events_of_message", id=message_id, limit=limit)
    return rows


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
