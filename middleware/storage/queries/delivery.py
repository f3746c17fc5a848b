"""The delivery worker's statements: claim due deliveries (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), lease them, read their triggers, note send intents, and record outcomes, attempts,
disclosures, the send ledger and destination pauses. A few statements per batch whatever its
size: lists of ids bind as one parameter, rows are written with ``executemany``."""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from sqlalchemy import Table, delete, insert, or_, select, update

from ..sql import UnitOfWork, any_of, param, query
from ..statuses import DeliveryStatus
from ._tables import ALERT, ATTEMPT, DELIVERY, DISCLOSURE, INTENT, KV, LEDGER, TRIGGER, table

DISABLED = "destination.disabled."  # kv prefix: 410 Gone (endpoint asked to be removed)
PAUSED = "destination.paused."  # kv prefix: static credentials refused (circuit open until resumed)

_D, _T = DELIVERY.c, TRIGGER.c


class DueDelivery(NamedTuple):
    id: int
    trigger_id: int
    destination: str
    idempotency_key: str
    status: str
    attempts: int
    next_attempt_at: float
    kind: str  # statuses.DeliveryKind


class TriggerToSend(NamedTuple):
    id: int
    rule_id: str
    ruleset_version: str
    purpose: str
    name: str
    status: str
    patient_key: str | None
    payload: str
    fired_at: float | None
    due_at: float
    journey_id: str | None


class DeliveryToRecord(NamedTuple):
    id: int
    attempts: int
    destination: str
    idempotency_key: str


def _due(cond: Any) -> Any:
    return (select(_D.id, _D.trigger_id, _D.destination, _D.idempotency_key, _D.status, _D.attempts, _D.next_attempt_at,
                   _D.kind)
            .where(cond, ~any_of(_D.destination, "blocked")).order_by(_D.next_attempt_at).limit(param("limit"))
            .with_for_update(skip_locked=True))  # PostgreSQL only: SQLite renders no locking clause


def _insert(table: Table, *columns: str) -> Any:
    """``INSERT`` of the named columns, each bound as the parameter of its name (for ``many``)."""
    return insert(table).values({c: param(c) for c in columns})


# two index-ordered reads (due pending rows; expired leases), merged by the caller: one query with OR
# made SQLite sort every due row before the LIMIT (MULTI-INDEX OR + temp B-tree; bench/growth.py)
query("delivery.claim_due", _due((_D.status == DeliveryStatus.PENDING) & (_D.next_attempt_at <= param("now"))),
      DueDelivery)
query("delivery.claim_expired", _due((_D.status == DeliveryStatus.SENDING) & (_D.locked_until < param("now"))),
      DueDelivery)
query("delivery.lease", update(DELIVERY).where(any_of(_D.id, "ids")).values(
    status=DeliveryStatus.SENDING, locked_until=param("until"), attempts=_D.attempts + 1, updated_at=param("now"),
    locked_by=param("owner")))
query("delivery.triggers_of",
      select(_T.id, _T.rule_id, _T.ruleset_version, _T.purpose, _T.name, _T.status, _T.patient_key, _T.payload,
             _T.fired_at, _T.due_at, _T.journey_id).where(any_of(_T.id, "ids")), TriggerToSend)
query("delivery.paused_keys", select(KV.c.key).where(or_(KV.c.key.startswith(DISABLED), KV.c.key.startswith(PAUSED))))
query("delivery.lease_owners_on_host",
      select(_D.locked_by).distinct().where(_D.status == DeliveryStatus.SENDING, _D.locked_until >= param("now"),
                                            _D.locked_by.startswith(param("host"))))
query("delivery.expire_owner", update(DELIVERY).where(_D.locked_by == param("owner"), _D.status == DeliveryStatus.SENDING)
      .values(locked_until=param("until")))
query("delivery.intents_of", select(INTENT.c.idempotency_key).where(any_of(INTENT.c.idempotency_key, "keys")))
query("delivery.intent_add", _insert(INTENT, "idempotency_key", "delivery_id", "destination", "started_at"))
query("delivery.intents_done", delete(INTENT).where(any_of(INTENT.c.idempotency_key, "keys")))
query("delivery.ledger_of", select(LEDGER.c.idempotency_key).where(any_of(LEDGER.c.idempotency_key, "keys")))
query("delivery.ledger_add", _insert(LEDGER, "idempotency_key", "destination", "sent_at"))
query("delivery.to_record", select(_D.id, _D.attempts, _D.destination, _D.idempotency_key).where(any_of(_D.id, "ids")),
      DeliveryToRecord)
query("delivery.attempt_add", _insert(ATTEMPT, "delivery_id", "at", "outcome", "status_code", "error", "duration_ms"))
query("delivery.disclosure_add", _insert(
    DISCLOSURE, "delivery_id", "trigger_id", "patient_key", "destination", "fields", "body_sha256", "purpose", "rule_id",
    "ruleset_version", "sent_at", "outcome", "body_bytes", "request_target", "attempt"))
query("delivery.alert_add", _insert(ALERT, "kind", "destination", "delivery_id", "message", "created_at"))

# the outcome of one delivery (``many``: one executemany per kind of outcome in a batch); the lease ends
_BY_ID = _D.id == param("p_id")
query("delivery.set_skipped", update(DELIVERY).where(_BY_ID).values(
    status=param("p_status"), last_error=param("p_error"), updated_at=param("p_now"), locked_until=None))
query("delivery.set_delivered", update(DELIVERY).where(_BY_ID).values(
    status=DeliveryStatus.DELIVERED, delivered_at=param("p_now"), last_error=None, last_status_code=param("p_code"),
    updated_at=param("p_now"), locked_until=None))
query("delivery.set_retry", update(DELIVERY).where(_BY_ID).values(
    status=DeliveryStatus.PENDING, next_attempt_at=param("p_next"), last_error=param("p_error"),
    last_status_code=param("p_code"), updated_at=param("p_now"), locked_until=None))
query("delivery.set_dead", update(DELIVERY).where(_BY_ID).values(
    status=DeliveryStatus.DEAD, last_error=param("p_error"), last_status_code=param("p_code"), updated_at=param("p_now"),
    locked_until=None))
#: per-protocol outcomes: the journey entry of a delivered trigger was delivered (issue 14)
query("delivery.outcome_delivered", update(table("outcome")).where(
    table("outcome").c.trigger_id == select(_D.trigger_id).where(_D.id == param("p_id")).scalar_subquery(),
    table("outcome").c.delivered.is_(False)).values(delivered=True, updated_at=param("p_now")))
OUTCOME_UPDATES = ("delivery.set_skipped", "delivery.set_delivered", "delivery.set_retry", "delivery.set_dead")


def paused(u: UnitOfWork) -> set[str]:
    """Destinations paused by a 410 or refused static credentials (until an operator resumes them)."""
    return {k.split(".", 2)[2] for (k,) in u.all("delivery.paused_keys")}


def claim(u: UnitOfWork, *, now: float, blocked: Sequence[str], limit: int) -> list[DueDelivery]:
    """Up to ``limit`` due deliveries (pending and due, or with an expired lease), oldest due first."""
    rows: list[DueDelivery] = [*u.all("delivery.claim_due", now=now, blocked=list(blocked), limit=limit),
                               *u.all("delivery.claim_expired", now=now, blocked=list(blocked), limit=limit)]
    return sorted(rows, key=lambda d: (d.next_attempt_at, d.id))[:limit]


def lease(u: UnitOfWork, ids: list[int], *, now: float, until: float, owner: str) -> None:
    u.run("delivery.lease", ids=ids, now=now, until=until, owner=owner)


def triggers_of(u: UnitOfWork, ids: list[int]) -> dict[int, TriggerToSend]:
    return {t.id: t for t in u.all("delivery.triggers_of", ids=ids)}


def lease_owners_on_host(u: UnitOfWork, host: str, now: float) -> list[str]:
    """``locked_by`` of the live leases held by workers of this host (``host`` ends with ``:``)."""
    return [o for (o,) in u.all("delivery.lease_owners_on_host", host=host, now=now)]


def expire_leases_of(u: UnitOfWork, owner: str, now: float) -> None:
    u.run("delivery.expire_owner", owner=owner, until=now - 1)


def keys_in(u: UnitOfWork, name: str, keys: list[str]) -> set[str]:
    """Which of ``keys`` are in the send intents (``delivery.intents_of``) or the send ledger
    (``delivery.ledger_of``)."""
    return {k for (k,) in u.all(name, keys=keys)} if keys else set()


def to_record(u: UnitOfWork, ids: list[int]) -> dict[int, DeliveryToRecord]:
    return {d.id: d for d in u.all("delivery.to_record", ids=ids)}


def pause(u: UnitOfWork, key: str, value: str, alert: dict[str, Any], now: float) -> bool:
    """Pause a destination (``key`` in kv) and raise its alert, unless it is paused already; True if paused now."""
    from .kv import add

    if not add(u, key, value, now):
        return False
    u.many("delivery.alert_add", [alert])
    return True
