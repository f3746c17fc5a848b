"""The console's rollups (``console_rollup``): per-minute counts added incrementally from id
watermarks, and read back for the overview's sparklines (a PK range: one series, one day).

Reading new rows is a primary-key range (``id > :after ORDER BY id LIMIT :limit``); no query
here counts messages or attempts across their tables."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from ..sql import UnitOfWork, param, query, unit
from ..statuses import InboundStatus
from . import delivery, kv
from .metrics import DeliveryCount
from ._tables import ATTEMPT, INBOUND, KV, ROLLUP


class NewInbound(NamedTuple):
    id: int
    received_at: float
    channel: str
    source: str


class NewAttempt(NamedTuple):
    id: int
    at: float
    outcome: str


class RollupRow(NamedTuple):
    minute: int
    key: str
    n: int


def _add(dialect: str) -> Any:
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ROLLUP).values(
        series=param("series"), minute=param("minute"), key=param("key"), n=param("n"))
    return ins.on_conflict_do_update(index_elements=[ROLLUP.c.series, ROLLUP.c.minute, ROLLUP.c.key],
                                     set_={"n": ROLLUP.c.n + ins.excluded.n})


query("console.inbound_after", select(INBOUND.c.id, INBOUND.c.received_at, INBOUND.c.channel, INBOUND.c.source)
      .where(INBOUND.c.id > param("after")).order_by(INBOUND.c.id).limit(param("limit")), NewInbound)
query("console.attempts_after", select(ATTEMPT.c.id, ATTEMPT.c.at, ATTEMPT.c.outcome)
      .where(ATTEMPT.c.id > param("after")).order_by(ATTEMPT.c.id).limit(param("limit")), NewAttempt)
query("console.rollup_add", _add)
query("console.rollup_read", select(ROLLUP.c.minute, ROLLUP.c.key, ROLLUP.c.n)
      .where(ROLLUP.c.series == param("series"), ROLLUP.c.minute >= param("from_minute"))
      .order_by(ROLLUP.c.minute), RollupRow)
# the backlog without counting it all: the oldest unprocessed message is the first entry of
# ix_inbound_status_id (status, id); the count stops at ``cap`` (an index-only range on both backends)
_RECEIVED = INBOUND.c.status == InboundStatus.RECEIVED
query("console.backlog_oldest", select(INBOUND.c.received_at).where(_RECEIVED).order_by(INBOUND.c.id).limit(1))
query("console.backlog_capped", select(func.count()).select_from(
    select(INBOUND.c.id).where(_RECEIVED).limit(param("cap")).subquery()))
# taking the watermark's row lock first serialises replicas filling at the same time (PostgreSQL)
query("console.watermark_lock", update(KV).where(KV.c.key == param("key")).values(updated_at=param("at")))


def inbound_after(u: UnitOfWork, after: int, limit: int) -> list[NewInbound]:
    rows: list[NewInbound] = u.all("console.inbound_after", after=after, limit=limit)
    return rows


def attempts_after(u: UnitOfWork, after: int, limit: int) -> list[NewAttempt]:
    rows: list[NewAttempt] = u.all("console.attempts_after", after=after, limit=limit)
    return rows


def add_counts(u: UnitOfWork, series: str, counts: dict[tuple[int, str], int]) -> None:
    """Add ``counts`` ((minute, key) -> n) to ``series``."""
    u.many("console.rollup_add", [{"series": series, "minute": m, "key": k, "n": n} for (m, k), n in sorted(counts.items())])


def read(u: UnitOfWork, series: str, from_minute: int) -> list[RollupRow]:
    rows: list[RollupRow] = u.all("console.rollup_read", series=series, from_minute=from_minute)
    return rows


def lock_watermark(u: UnitOfWork, key: str, at: float) -> bool:
    """Lock the watermark row ``key`` for this transaction; False when it does not exist yet."""
    return u.run("console.watermark_lock", key=key, at=at) > 0


# -- filling and reading (run by the service's rollup loop and the overview) -------------------

#: ``channel`` of a stored message -> the kind of source the overview groups by
KIND = {"mllp": "hl7v2", "http": "hl7v2", "fhir": "fhir"}
WATERMARKS = {"ingest": "console.rollup.ingest", "attempt": "console.rollup.attempt"}


def _fill_one(engine: Engine, series: str, now: float, batch: int, grace_s: float) -> bool:
    """Add the next ``batch`` rows of ``series`` to the rollups; True when more may be waiting.

    Rows received in the last ``grace_s`` wait for the next run: an insert committed a little
    after a later id (PostgreSQL sequences) is then still counted."""
    key = WATERMARKS[series]
    with unit(engine, write=True) as u:
        kv.add(u, key, "0", now)
        lock_watermark(u, key, now)
        after = int(kv.get(u, key) or 0)
        counts: dict[tuple[int, str], int] = defaultdict(int)
        last, full = after, True
        rows: list[Any] = inbound_after(u, after, batch) if series == "ingest" else attempts_after(u, after, batch)
        for r in rows:
            at = r.received_at if series == "ingest" else r.at
            if at >= now - grace_s:
                full = False
                break
            label = f"{KIND.get(r.channel, r.channel)}:{r.source}" if series == "ingest" else r.outcome
            counts[(int(at // 60), label[:100])] += 1
            last = r.id
        if last != after:
            add_counts(u, series, counts)
            kv.put(u, key, str(last), now)
    return full and len(rows) == batch


def fill(engine: Engine, now: float, *, batch: int = 5000, grace_s: float = 30.0, max_batches: int = 1000) -> int:
    """Bring every series up to date (bounded: ``max_batches`` short transactions per series);
    the number of batches run."""
    done = 0
    for series in WATERMARKS:
        for _ in range(max_batches):
            done += 1
            if not _fill_one(engine, series, now, batch, grace_s):
                break
    return done


def per_minute(engine: Engine, series: str, from_minute: int) -> list[RollupRow]:
    """Every (minute, key, n) of ``series`` from ``from_minute`` on (a primary-key range)."""
    with unit(engine) as u:
        return read(u, series, from_minute)


class NowFigures(NamedTuple):
    """The overview's figures of this moment (one read transaction, no unbounded count of messages)."""

    backlog: int  # unprocessed messages, counted up to the cap
    backlog_capped: bool  # True: at least ``backlog``
    oldest_received_at: float | None
    triggers_pending: int
    triggers_due: int
    oldest_due_at: float | None
    deliveries: tuple[DeliveryCount, ...]
    paused_destinations: frozenset[str]


def now_figures(engine: Engine, now: float, backlog_cap: int = 1_000) -> NowFigures:
    """Backlog (capped), lag, triggers and deliveries now: the statements ``/metrics`` uses for
    triggers and deliveries (their tables hold no message), a bounded read for the backlog."""
    with unit(engine) as u:
        backlog = int(u.scalar("console.backlog_capped", cap=backlog_cap) or 0)
        return NowFigures(
            backlog=backlog, backlog_capped=backlog >= backlog_cap, oldest_received_at=u.scalar("console.backlog_oldest"),
            triggers_pending=int(u.scalar("metrics.triggers_pending") or 0),
            triggers_due=int(u.scalar("metrics.triggers_due", now=now) or 0),
            oldest_due_at=u.scalar("metrics.oldest_due"),
            deliveries=tuple(u.all("metrics.deliveries_by_status")),
            paused_destinations=frozenset(delivery.paused(u)))
