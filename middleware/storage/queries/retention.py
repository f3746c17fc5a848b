"""Retention's statements: pick a chunk of rows whose bodies are due to be blanked, blank them.

Each purgeable table has a time column (indexed: the windows are index ranges), what marks a row
still to purge, and what the purge sets (``delivery/retention.py`` says why)."""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Table, and_, exists, null, select, update

from ..sql import UnitOfWork, any_of, param, query
from ..statuses import DeliveryStatus, InboundStatus, TriggerStatus
from ._tables import DELIVERY, EVENT, INBOUND, TRIGGER

PURGED = "{}"


class Stamp(NamedTuple):
    """A row picked for purging: its id and the value of the table's time column."""

    id: int
    at: float


_T = TRIGGER.c
_busy_delivery = exists().where(DELIVERY.c.trigger_id == _T.id,
                                any_of(DELIVERY.c.status, "busy"))

#: name -> (table, time column, rows still to purge, what the purge sets)
_TABLES: dict[str, tuple[Table, Any, Any, dict[str, Any]]] = {
    "inbound": (INBOUND, INBOUND.c.received_at,
                and_(INBOUND.c.status != InboundStatus.RECEIVED, INBOUND.c.raw.is_not(None)),
                {"raw": null(), "ack": null()}),
    "events": (EVENT, EVENT.c.created_at, EVENT.c.resource != PURGED, {"resource": PURGED}),
    "triggers": (TRIGGER, _T.updated_at,
                 and_(_T.status != TriggerStatus.PENDING, _T.payload != PURGED, ~_busy_delivery),
                 {"payload": PURGED, "explain": null()}),
}
AREAS = tuple(_TABLES)
_BUSY = [DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value]

for _name, (_table, _ts, _todo, _sets) in _TABLES.items():
    query(f"retention.pick_{_name}",
          select(_table.c.id, _ts).where(_ts >= param("lo"), _ts < param("cutoff"), _todo).order_by(_ts)
          .limit(param("limit")), Stamp)
    query(f"retention.purge_{_name}", update(_table).where(any_of(_table.c.id, "ids")).values(**_sets))


def purge_chunk(u: UnitOfWork, area: str, lo: float, cutoff: float, limit: int) -> list[Stamp]:
    """Blank the bodies of up to ``limit`` rows of ``area`` whose time is in [lo, cutoff), oldest
    first; return them (id and time)."""
    extra = {"busy": _BUSY} if area == "triggers" else {}
    rows: list[Stamp] = u.all(f"retention.pick_{area}", lo=lo, cutoff=cutoff, limit=limit, **extra)
    if rows:
        u.run(f"retention.purge_{area}", ids=[r.id for r in rows])
    return rows
