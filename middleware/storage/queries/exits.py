"""Exits (issue 17): the entries a destination received that a later clinical event ends, the exit
deliveries that tell it so, and the poller of the vendors' confirmations.

An exit is a ``delivery`` row of kind ``exit`` for the entry's trigger and destination; its
idempotency key is derived from the entry's, so reprocessing, a second cancelling event or a death
after a cancellation never makes a second exit for one entry.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..sql import UnitOfWork, any_of, param, query
from ..statuses import Confirmation, DeliveryKind, DeliveryStatus, TriggerStatus
from ._tables import DELIVERY, TRIGGER

_D, _T = DELIVERY.c, TRIGGER.c


class DeliveredEntry(NamedTuple):
    """A fired trigger's entry delivered to an exit-enabled destination."""

    trigger_id: int
    event_id: int | None
    payload: str
    rule_id: str
    journey_id: str | None
    resource_key: str | None
    created_at: float
    destination: str
    idempotency_key: str


class PendingConfirmation(NamedTuple):
    id: int
    trigger_id: int
    destination: str
    idempotency_key: str
    vendor_ref: str | None
    confirm_by: float | None


_entries = (select(_T.id, _T.event_id, _T.payload, _T.rule_id, _T.journey_id, _T.resource_key, _T.created_at,
                   _D.destination, _D.idempotency_key)
            .select_from(TRIGGER.join(DELIVERY, _D.trigger_id == _T.id))
            .where(_T.status == TriggerStatus.FIRED, _D.kind == DeliveryKind.ENTRY,
                   _D.status.in_([DeliveryStatus.DELIVERED, DeliveryStatus.UNCONFIRMED]),
                   any_of(_D.destination, "destinations"))
            .order_by(_T.id))
#: the delivered entries of some rules in one scope created since a time (an event's cancellations)
ENTRIES_FOR_PATIENT = query("exits.entries_for_patient", _entries.where(
    any_of(_T.rule_id, "rule_ids"), _T.patient_key == param("key"), _T.created_at >= param("since")), DeliveredEntry)
ENTRIES_FOR_RESOURCE = query("exits.entries_for_resource", _entries.where(
    any_of(_T.rule_id, "rule_ids"), _T.resource_key == param("key"), _T.created_at >= param("since")), DeliveredEntry)
#: every delivered entry of a patient (a death exits every journey at every destination)
ALL_ENTRIES_OF_PATIENT = query("exits.all_entries_of_patient", _entries.where(_T.patient_key == param("key")),
                               DeliveredEntry)


def _add(dialect: str) -> Any:
    ins = (sqlite if dialect == "sqlite" else postgresql).insert(DELIVERY).values(
        trigger_id=param("trigger_id"), destination=param("destination"), idempotency_key=param("idempotency_key"),
        kind=DeliveryKind.EXIT, status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=param("now"),
        created_at=param("now"), updated_at=param("now"))
    return ins.on_conflict_do_nothing(index_elements=[_D.idempotency_key])


EXIT_ADD = query("exits.add", _add)

# -- confirmations --------------------------------------------------------------------------------

query("exits.confirmations_due", select(_D.id, _D.trigger_id, _D.destination, _D.idempotency_key, _D.vendor_ref, _D.confirm_by)
      .where(_D.confirmation == Confirmation.PENDING, _D.next_attempt_at <= param("now"))
      .order_by(_D.next_attempt_at).limit(param("limit")), PendingConfirmation)
query("exits.confirmed", update(DELIVERY).where(_D.id == param("p_id")).values(
    confirmation=Confirmation.CONFIRMED, confirmed_at=param("p_now"), updated_at=param("p_now"), last_error=None))
query("exits.unconfirmed", update(DELIVERY).where(_D.id == param("p_id")).values(
    confirmation=Confirmation.UNCONFIRMED, updated_at=param("p_now"), last_error=param("p_error")))
query("exits.poll_later", update(DELIVERY).where(_D.id == param("p_id")).values(
    next_attempt_at=param("p_next"), updated_at=param("p_now")))
query("exits.set_confirmation", update(DELIVERY).where(_D.id == param("p_id")).values(
    confirmation=param("p_confirmation"), vendor_ref=param("p_ref"), confirm_by=param("p_by"),
    next_attempt_at=param("p_next")))


def add(u: UnitOfWork, rows: list[dict[str, Any]]) -> None:
    """``rows``: ``{trigger_id, destination, idempotency_key, now}``; an exit already made is kept."""
    u.many(EXIT_ADD, rows)


def confirmations_due(u: UnitOfWork, now: float, limit: int = 200) -> list[PendingConfirmation]:
    rows: list[PendingConfirmation] = u.all("exits.confirmations_due", now=now, limit=limit)
    return rows
