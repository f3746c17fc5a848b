"""What ``GET /metrics`` and ``GET /healthz`` read from the shared database."""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import func, literal, select
from sqlalchemy.engine import Engine

from ..sql import param, query, unit
from ..statuses import InboundStatus, TriggerStatus
from . import delivery
from ._tables import DELIVERY, INBOUND, TRIGGER

class Backlog(NamedTuple):
    oldest_received_at: float | None
    rows: int


class DeliveryCount(NamedTuple):
    destination: str
    status: str
    rows: int


class ConfirmationCount(NamedTuple):
    destination: str
    kind: str
    confirmation: str
    rows: int


class DatabaseFigures(NamedTuple):
    """Backlog, trigger and delivery figures at one moment (one read transaction)."""

    backlog: Backlog
    triggers_pending: int
    triggers_due: int
    oldest_due_at: float | None
    deliveries: tuple[DeliveryCount, ...]
    paused_destinations: frozenset[str]
    confirmations: tuple[ConfirmationCount, ...] = ()


_T, _D = TRIGGER.c, DELIVERY.c
_PENDING = _T.status == TriggerStatus.PENDING

query("health.ping", select(literal(1)))
query("metrics.inbound_backlog",
      select(func.min(INBOUND.c.received_at), func.count()).where(INBOUND.c.status == InboundStatus.RECEIVED), Backlog)
query("metrics.triggers_pending", select(func.count()).select_from(TRIGGER).where(_PENDING))
query("metrics.triggers_due", select(func.count()).select_from(TRIGGER).where(_PENDING, _T.due_at <= param("now")))
query("metrics.oldest_due", select(func.min(_T.due_at)).where(_PENDING))
query("metrics.deliveries_by_status",
      select(_D.destination, _D.status, func.count()).group_by(_D.destination, _D.status), DeliveryCount)
#: what vendors' answers prove (issue 17), from the confirmation index: accepted, pending, confirmed, unconfirmed
query("metrics.confirmations",
      select(_D.destination, _D.kind, _D.confirmation, func.count()).where(_D.confirmation.is_not(None))
      .group_by(_D.destination, _D.kind, _D.confirmation), ConfirmationCount)


def ping(engine: Engine) -> None:
    """Raises when the database cannot answer a trivial query."""
    with unit(engine) as u:
        u.scalar("health.ping")


def database_figures(engine: Engine, now: float) -> DatabaseFigures:
    with unit(engine) as u:
        backlog = u.one("metrics.inbound_backlog")
        return DatabaseFigures(
            backlog=Backlog(backlog.oldest_received_at, int(backlog.rows or 0)),
            triggers_pending=int(u.scalar("metrics.triggers_pending") or 0),
            triggers_due=int(u.scalar("metrics.triggers_due", now=now) or 0),
            oldest_due_at=u.scalar("metrics.oldest_due"),
            deliveries=tuple(u.all("metrics.deliveries_by_status")),
            paused_destinations=frozenset(delivery.paused(u)),
            confirmations=tuple(u.all("metrics.confirmations")),
        )


query("metrics.last_received", select(func.max(INBOUND.c.received_at)).where(
    INBOUND.c.channel == param("channel"), INBOUND.c.source == param("source")))


def last_received(engine: Engine, *, channel: str, source: str) -> float | None:
    """When the newest message of ``source`` on ``channel`` arrived (epoch seconds), or None."""
    with unit(engine) as u:
        value: float | None = u.scalar("metrics.last_received", channel=channel, source=source)
    return value
