"""Retention: purge raw inbound messages and payload bodies after ``retention_days``.

``purge(engine, now=..., days=...)`` blanks, for rows older than the cut-off:

* ``inbound_message.raw`` and ``.ack`` (messages no longer waiting to be processed);
* ``event.resource`` (the FHIR snapshot each clinical event carried);
* ``trigger.payload`` and ``.explain`` of triggers that are finished (not pending)
  and have no delivery still pending or sending.

Rows themselves stay (ids, statuses, times: the operational history); current state
(``patient``, ``resource_state``) is live data and is replaced by updates, not aged
out. The disclosure audit is **never** purged (kept at least 6 years), nor are the
send ledger, suppressions, authorizations or consents. It is idempotent.

Cost does not grow with history: each run covers only the window since the previous
run's cut-off (kept in ``kv`` as ``retention.from``), found through indexes on the time
columns, and works in chunks of ``CHUNK`` rows, each its own short write transaction
(ingest commits go between chunks instead of waiting for a whole purge). A row that was
still busy when its window passed (a message never processed, a trigger with a delivery
still retrying) is left; ``full=True`` (``careloop retention run --full``) covers all history.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import orjson
from sqlalchemy.engine import Engine

from ..storage.queries import kv
from ..storage.queries.retention import AREAS, purge_chunk
from ..storage.sql import unit

log = logging.getLogger("careloop.retention")

DAY_S = 86400.0
CHUNK = 2000
WATERMARK = "retention.from"


@dataclass(frozen=True)
class PurgeReport:
    cutoff: float
    inbound: int
    events: int
    triggers: int

    def as_dict(self) -> dict[str, float | int]:
        return {"cutoff": self.cutoff, "inbound_messages": self.inbound, "events": self.events, "triggers": self.triggers}


def _window_start(engine: Engine) -> float:
    with unit(engine) as u:
        value = kv.get(u, WATERMARK)
    return float(orjson.loads(value).get("at", 0.0)) if value else 0.0


def _save_window(engine: Engine, cutoff: float) -> None:
    with unit(engine, write=True) as u:
        kv.put(u, WATERMARK, orjson.dumps({"at": cutoff}).decode(), time.time())


def _purge_table(engine: Engine, which: str, lo: float, cutoff: float) -> int:
    done = 0
    while True:
        with unit(engine, write=True) as u:
            rows = purge_chunk(u, which, lo, cutoff, CHUNK)
        done += len(rows)
        if len(rows) < CHUNK:
            return done
        lo = float(rows[-1].at)  # the next chunk starts where this one ended (rows purged here no longer match)


def purge(engine: Engine, *, now: float, days: int, full: bool = False) -> PurgeReport:
    """Blank bodies older than ``now - days``; return counts. Raises ValueError if ``days`` < 1."""
    if days < 1:
        raise ValueError("retention_days must be at least 1")
    cutoff = now - days * DAY_S
    lo = 0.0 if full else min(_window_start(engine), cutoff)
    counts = {which: _purge_table(engine, which, lo, cutoff) for which in AREAS}
    if cutoff > lo:
        _save_window(engine, cutoff)
    report = PurgeReport(cutoff, counts["inbound"], counts["events"], counts["triggers"])
    log.info("retention purge", extra={"action": "retention.purged", "count": sum(counts.values())})
    return report
