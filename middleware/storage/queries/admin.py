"""Operator actions on deliveries (list, replay, resume, alerts, pauses), shared by the CLI and
the API through ``delivery/admin.py``. Optional filters are parameters that may be ``None``
(``CAST(:p AS ...) IS NULL OR column = :p``), so each query compiles once."""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Integer, String, cast, delete, func, or_, select, true, update

from ..sql import UnitOfWork, any_of, get, param, query
from ..statuses import Confirmation, DeliveryStatus
from . import operator
from ._tables import ALERT, DELIVERY, INTENT, KV, TRIGGER
from .operator import AttemptDetail

_D, _T, _A = DELIVERY.c, TRIGGER.c, ALERT.c


def _optional(name: str, column: Any, type_: Any = String) -> Any:
    """``column = :name``, or true when ``:name`` is NULL."""
    return or_(cast(param(name), type_).is_(None), column == param(name))


class DeliveryListed(NamedTuple):
    id: int
    trigger_id: int
    rule_id: str | None
    destination: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_status_code: int | None
    delivered_at: float | None
    kind: str
    confirmation: str | None


class ReplayCandidate(NamedTuple):
    id: int
    idempotency_key: str


class AlertRecord(NamedTuple):
    id: int
    kind: str
    destination: str
    delivery_id: int | None
    message: str
    created_at: float
    resolved_at: float | None


#: the columns of a :class:`DeliveryListed`, in its order (one list for every query that returns one)
_LISTED = (_D.id, _D.trigger_id, _T.rule_id, _D.destination, _D.status, _D.attempts, _D.next_attempt_at,
           _D.last_error, _D.last_status_code, _D.delivered_at, _D.kind, _D.confirmation)

query("admin.list_deliveries",
      select(*_LISTED).select_from(DELIVERY.outerjoin(TRIGGER, _T.id == _D.trigger_id))
      .where(_optional("status", _D.status), _optional("destination", _D.destination))
      .order_by(_D.id.desc()).limit(param("limit")), DeliveryListed)
query("admin.replay_candidates",
      select(_D.id, _D.idempotency_key)
      .where(_D.status == param("status"), _optional("delivery_id", _D.id, Integer),
             _optional("destination", _D.destination),
             or_(cast(param("rule_id"), String).is_(None),
                 _D.trigger_id.in_(select(_T.id).where(_T.rule_id == param("rule_id")))),
             or_(cast(param("reason"), String).is_(None), _D.last_error.contains(param("reason"))))
      .order_by(_D.id), ReplayCandidate)
query("admin.replay_reset",
      update(DELIVERY).where(any_of(_D.id, "ids"))
      .values(status=DeliveryStatus.PENDING, next_attempt_at=param("now"), attempts=0, updated_at=param("now"),
              locked_until=None))
query("admin.intents_delete", delete(INTENT).where(any_of(INTENT.c.idempotency_key, "keys")))
query("admin.kv_delete", delete(KV).where(any_of(KV.c.key, "keys")))
query("admin.alerts_resolve",
      update(ALERT).where(_A.destination == param("destination"), _A.resolved_at.is_(None))
      .values(resolved_at=param("now")))
query("admin.pending_due_now",
      update(DELIVERY).where(_D.destination == param("destination"), _D.status == DeliveryStatus.PENDING,
                             _D.next_attempt_at > param("now"))
      .values(next_attempt_at=param("now")))
#: the deliveries page (console): dead letters, unconfirmed and failing (pending with an error) deliveries, or one
#: status; filters by destination and rule; newest first, keyset-paginated by id (no COUNT per page)
query("admin.problem_deliveries",
      select(*_LISTED).select_from(DELIVERY.outerjoin(TRIGGER, _T.id == _D.trigger_id))
      .where(or_(_D.status == param("status"),
                 cast(param("status"), String).is_(None)
                 & (_D.status.in_([DeliveryStatus.DEAD, DeliveryStatus.UNCONFIRMED])
                    | ((_D.status == DeliveryStatus.PENDING) & _D.last_error.is_not(None))
                    | (_D.confirmation == Confirmation.UNCONFIRMED))),  # exits the vendor never confirmed (issue 17)
             _optional("destination", _D.destination), _optional("rule_id", _T.rule_id),
             or_(cast(param("before_id"), Integer).is_(None), _D.id < param("before_id")))
      .order_by(_D.id.desc()).limit(param("limit")), DeliveryListed)
query("admin.delivery", select(*_LISTED).select_from(DELIVERY.outerjoin(TRIGGER, _T.id == _D.trigger_id))
      .where(_D.id == param("id")), DeliveryListed)
#: how many deliveries a replay with these filters would put back (the console's confirm step)
def _replay_count(dialect: str) -> Any:
    candidates: Any = get("admin.replay_candidates").statement(dialect)
    return select(func.count()).select_from(candidates.subquery())


query("admin.replay_count", _replay_count)
query("admin.alerts",
      select(_A.id, _A.kind, _A.destination, _A.delivery_id, _A.message, _A.created_at, _A.resolved_at)
      .where(or_(param("all") == true(), _A.resolved_at.is_(None)))
      .order_by(_A.id.desc()), AlertRecord)


def list_deliveries(u: UnitOfWork, *, status: str | None, destination: str | None, limit: int) -> list[DeliveryListed]:
    rows: list[DeliveryListed] = u.all("admin.list_deliveries", status=status, destination=destination, limit=limit)
    return rows


def attempts_of(u: UnitOfWork, delivery_ids: list[int]) -> list[AttemptDetail]:
    """The attempts of these deliveries, oldest first (the operator API's query)."""
    return operator.attempts_of(u, delivery_ids)


def replay(u: UnitOfWork, *, status: str, delivery_id: int | None, destination: str | None, rule_id: str | None,
           reason_contains: str | None, now: float) -> int:
    """Put the matching deliveries back to pending with a fresh attempt budget; drop their send
    intents (so an ``unconfirmed`` one is really re-sent). Returns how many."""
    rows: list[ReplayCandidate] = u.all("admin.replay_candidates", status=status, delivery_id=delivery_id,
                                        destination=destination, rule_id=rule_id, reason=reason_contains or None)
    if rows:
        u.run("admin.replay_reset", ids=[r.id for r in rows], now=now)
        u.run("admin.intents_delete", keys=[r.idempotency_key for r in rows])
    return len(rows)


def lift(u: UnitOfWork, destination: str, prefixes: tuple[str, ...], now: float) -> bool:
    """Remove ``destination``'s pause keys and resolve its open alerts; when it was paused, what
    waited behind the pause is due now. True if it was paused."""
    lifted = u.run("admin.kv_delete", keys=[p + destination for p in prefixes]) > 0
    u.run("admin.alerts_resolve", destination=destination, now=now)
    if lifted:
        u.run("admin.pending_due_now", destination=destination, now=now)
    return lifted


def alerts(u: UnitOfWork, *, open_only: bool) -> list[AlertRecord]:
    rows: list[AlertRecord] = u.all("admin.alerts", all=not open_only)
    return rows


def problem_deliveries(u: UnitOfWork, *, status: str | None, destination: str | None, rule_id: str | None,
                       before_id: int | None, limit: int) -> list[DeliveryListed]:
    """One page of dead / unconfirmed / failing deliveries (or of ``status``), newest first."""
    rows: list[DeliveryListed] = u.all("admin.problem_deliveries", status=status, destination=destination, rule_id=rule_id,
                                       before_id=before_id, limit=limit)
    return rows


def delivery(u: UnitOfWork, delivery_id: int) -> DeliveryListed | None:
    row: DeliveryListed | None = u.one("admin.delivery", id=delivery_id)
    return row


def replay_count(u: UnitOfWork, *, status: str, delivery_id: int | None, destination: str | None, rule_id: str | None,
                 reason_contains: str | None) -> int:
    """How many deliveries :func:`replay` with the same arguments would put back."""
    return int(u.scalar("admin.replay_count", status=status, delivery_id=delivery_id, destination=destination,
                        rule_id=rule_id, reason=reason_contains or None) or 0)
