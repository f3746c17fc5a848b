"""Retention: purge raw inbound messages and payload bodies after ``retention_days``.

``purge(engine, now=..., days=...)`` blanks, for rows older than the cut-off:

* ``inbound_message.raw`` and ``.ack`` (messages no longer waiting to be processed);
* ``event.resource`` (the FHIR snapshot each clinical event carried);
* ``trigger.payload`` and ``.explain`` of triggers that are finished (not pending)
  and have no delivery still pending or sending.

Rows themselves stay (ids, statuses, times: the operational history); current state
(``patient``, ``resource_state``) is live data and is replaced by updates, not aged
out. The disclosure audit is **never** purged (kept at least 6 years), nor are the
send ledger, suppressions, authorizations or consents. Each run is one transaction
per table; it is idempotent.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import and_, exists, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ..storage.tables import DeliveryRow, EventRow, InboundMessage, TriggerRow

log = logging.getLogger("careloop.retention")

DAY_S = 86400.0
PURGED = "{}"


@dataclass(frozen=True)
class PurgeReport:
    cutoff: float
    inbound: int
    events: int
    triggers: int

    def as_dict(self) -> dict[str, float | int]:
        return {"cutoff": self.cutoff, "inbound_messages": self.inbound, "events": self.events, "triggers": self.triggers}


def purge(engine: Engine, *, now: float, days: int) -> PurgeReport:
    """Blank bodies older than ``now - days``; return counts. Raises ValueError if ``days`` < 1."""
    if days < 1:
        raise ValueError("retention_days must be at least 1")
    cutoff = now - days * DAY_S
    with Session(engine) as s:
        n_in = s.exec(  # type: ignore[call-overload]
            update(InboundMessage)
            .where(col(InboundMessage.received_at) < cutoff, InboundMessage.status != "received",
                   col(InboundMessage.raw).is_not(None))
            .values(raw=None, ack=None)
        ).rowcount or 0
        n_ev = s.exec(  # type: ignore[call-overload]
            update(EventRow).where(col(EventRow.created_at) < cutoff, EventRow.resource != PURGED).values(resource=PURGED)
        ).rowcount or 0
        busy = exists(select(DeliveryRow.id).where(
            and_(DeliveryRow.trigger_id == TriggerRow.id, col(DeliveryRow.status).in_(("pending", "sending")))
        ))
        n_tr = s.exec(  # type: ignore[call-overload]
            update(TriggerRow)
            .where(col(TriggerRow.updated_at) < cutoff, TriggerRow.status != "pending", TriggerRow.payload != PURGED, ~busy)
            .values(payload=PURGED, explain=None)
            .execution_options(synchronize_session=False)
        ).rowcount or 0
        s.commit()
    report = PurgeReport(cutoff, n_in, n_ev, n_tr)
    log.info("retention purge", extra={"action": "retention.purged", "count": n_in + n_ev + n_tr})
    return report
