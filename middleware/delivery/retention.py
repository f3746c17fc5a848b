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
from sqlalchemy import text
from sqlalchemy.engine import Engine

from ..storage.db import write_lock

log = logging.getLogger("careloop.retention")

DAY_S = 86400.0
PURGED = "{}"
CHUNK = 2000
WATERMARK = "retention.from"

#: (table, time column, what marks a row still to purge, what the purge sets)
_TABLES = {
    "inbound": ("inbound_message", "received_at", "status <> 'received' AND raw IS NOT NULL", "raw = NULL, ack = NULL"),
    "events": ("event", "created_at", "resource <> '{}'", "resource = '{}'"),
    "triggers": ('"trigger"', "updated_at",
                 "status <> 'pending' AND payload <> '{}' AND NOT EXISTS (SELECT 1 FROM delivery d WHERE d.trigger_id = "
                 "\"trigger\".id AND d.status IN ('pending', 'sending'))",
                 "payload = '{}', \"explain\" = NULL"),
}


@dataclass(frozen=True)
class PurgeReport:
    cutoff: float
    inbound: int
    events: int
    triggers: int

    def as_dict(self) -> dict[str, float | int]:
        return {"cutoff": self.cutoff, "inbound_messages": self.inbound, "events": self.events, "triggers": self.triggers}


def _window_start(engine: Engine) -> float:
    with engine.connect() as c:
        row = c.execute(text("SELECT value FROM kv WHERE key = :k"), {"k": WATERMARK}).first()
    return float(orjson.loads(row[0]).get("at", 0.0)) if row else 0.0


def _save_window(engine: Engine, cutoff: float) -> None:
    value = orjson.dumps({"at": cutoff}).decode()
    with write_lock(engine), engine.begin() as c:
        if c.execute(text("UPDATE kv SET value = :v, updated_at = :t WHERE key = :k"),
                     {"v": value, "t": time.time(), "k": WATERMARK}).rowcount == 0:
            c.execute(text("INSERT INTO kv (key, value, updated_at) VALUES (:k, :v, :t)"),
                      {"k": WATERMARK, "v": value, "t": time.time()})


def _purge_table(engine: Engine, which: str, lo: float, cutoff: float) -> int:
    table, ts, todo, sets = _TABLES[which]
    pick = text(f"SELECT id, {ts} FROM {table} WHERE {ts} >= :lo AND {ts} < :cutoff AND {todo} ORDER BY {ts} LIMIT {CHUNK}")
    done = 0
    while True:
        with write_lock(engine), engine.begin() as c:
            rows = c.execute(pick, {"lo": lo, "cutoff": cutoff}).all()
            if rows:
                ids = ", ".join(str(int(r[0])) for r in rows)
                c.execute(text(f"UPDATE {table} SET {sets} WHERE id IN ({ids})"))
        done += len(rows)
        if len(rows) < CHUNK:
            return done
        lo = float(rows[-1][1])  # the next chunk starts where this one ended (rows purged here no longer match)


def purge(engine: Engine, *, now: float, days: int, full: bool = False) -> PurgeReport:
    """Blank bodies older than ``now - days``; return counts. Raises ValueError if ``days`` < 1."""
    if days < 1:
        raise ValueError("retention_days must be at least 1")
    cutoff = now - days * DAY_S
    lo = 0.0 if full else min(_window_start(engine), cutoff)
    counts = {which: _purge_table(engine, which, lo, cutoff) for which in _TABLES}
    if cutoff > lo:
        _save_window(engine, cutoff)
    report = PurgeReport(cutoff, counts["inbound"], counts["events"], counts["triggers"])
    log.info("retention purge", extra={"action": "retention.purged", "count": sum(counts.values())})
    return report
