"""Prometheus collectors of a running careloop: figures read from the shared database at scrape
time (every replica reports the same backlog, lag, trigger and delivery figures: alert on ``max``
across replicas, not ``sum``) and this process's worker counters. Served by the API's
``GET /metrics`` and by ``careloop worker --metrics-port``; below both (neither imports the other).
Counts and destination names only, no PHI.

The database figures are counts whose cost grows with the tables (10 M pending triggers: a
scan of 10 M index entries, seconds). A scrape therefore never waits for them longer than
:data:`WAIT_S`: :class:`FigureCache` reads them in a thread of its own, at most one read at a
time and then only after a pause nine times the last read's duration (at most a tenth of one
core, per replica being scraped). A cheap read (an ordinary store: milliseconds) finishes within
the wait, so the scrape shows figures read for it; a slow one shows the last figures read, and
``careloop_database_figures_age_seconds`` says how old they are.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .storage.queries.metrics import DatabaseFigures, database_figures
from .storage.statuses import DeliveryStatus

if TYPE_CHECKING:
    from .service import Runtime

log = logging.getLogger("careloop.metrics")

CIRCUIT = {"closed": 0.0, "half-open": 1.0, "open": 2.0, "open-auth": 2.0}
#: the longest a scrape waits for a database read (the rest of it answers from the last read)
WAIT_S = 0.25
#: the largest share of wall-clock time spent reading the database figures while scraped
DUTY = 0.1


class FigureCache:
    """The database figures of the last completed read, and at most one read in flight.

    :meth:`get` starts a read (a daemon thread) unless one is running or the pause after the
    last has not passed, waits up to ``wait_s`` for the read in flight, and returns the newest
    figures with the wall-clock time they were read at (``None`` before the first read ends).
    The pause after a read of ``d`` seconds is ``d * (1 - duty) / duty``: reads take at most
    ``duty`` of the time, whatever the size of the tables. A failed read keeps the previous
    figures (their age grows) and is logged without its message (it may quote rows)."""

    def __init__(self, read: Callable[[float], DatabaseFigures], *, wait_s: float = WAIT_S, duty: float = DUTY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self.wait_s, self.duty, self._clock = read, wait_s, duty, clock
        self._lock = threading.Lock()
        self._running: threading.Event | None = None
        self._not_before = 0.0
        self.figures: DatabaseFigures | None = None
        self.read_at: float | None = None
        self.last_read_s = 0.0
        self.reads = 0

    def get(self) -> tuple[DatabaseFigures | None, float | None]:
        with self._lock:
            running = self._running
            if running is None and self._clock() >= self._not_before:
                running = self._running = threading.Event()
                threading.Thread(target=self._refresh, args=(running,), name="careloop-metrics-read", daemon=True).start()
        if running is not None:
            running.wait(self.wait_s)
        with self._lock:
            return self.figures, self.read_at

    def _refresh(self, done: threading.Event) -> None:
        t0, now = self._clock(), time.time()
        figures: DatabaseFigures | None = None
        try:
            figures = self._read(now)
        except Exception as exc:
            log.error("metrics database read failed", extra={"action": "metrics.read_error", "error_type": type(exc).__name__})
        finally:
            took = self._clock() - t0
            with self._lock:
                if figures is not None:
                    self.figures, self.read_at, self.reads = figures, now, self.reads + 1
                self.last_read_s = took
                self._not_before = self._clock() + took * (1.0 - self.duty) / self.duty
                self._running = None
            done.set()


class DatabaseCollector(Collector):
    """Backlog, lag, triggers, deliveries, dead letters and circuit state, from the database
    figures of :class:`FigureCache` (absent until its first read completes)."""

    def __init__(self, runtime: "Runtime") -> None:
        self.rt = runtime
        self.cache = FigureCache(lambda now: database_figures(runtime.engine, now))

    def describe(self) -> list[GaugeMetricFamily]:
        """Nothing: registering must not read the database (``collect`` would, at start-up)."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        db, read_at = self.cache.get()
        if db is None or read_at is None:
            return
        g = GaugeMetricFamily("careloop_database_figures_age_seconds",
                              "How long ago the database figures of this scrape were read (reads are paced: see docs/operations.md)")
        g.add_metric([], max(0.0, now - read_at))
        yield g
        g = GaugeMetricFamily("careloop_database_figures_read_seconds", "How long the last read of the database figures took")
        g.add_metric([], self.cache.last_read_s)
        yield g
        backlog, oldest, oldest_due = db.backlog.rows, db.backlog.oldest_received_at, db.oldest_due_at
        g = GaugeMetricFamily("careloop_processing_backlog", "Stored inbound messages not yet processed")
        g.add_metric([], float(backlog))
        yield g
        g = GaugeMetricFamily("careloop_processing_lag_seconds",
                              "Age of the oldest stored message not yet processed (0 when none)")
        g.add_metric([], max(0.0, now - float(oldest)) if oldest is not None else 0.0)
        yield g
        g = GaugeMetricFamily("careloop_triggers_pending", "Pending triggers (due or not)")
        g.add_metric([], float(db.triggers_pending))
        yield g
        g = GaugeMetricFamily("careloop_triggers_due", "Pending triggers whose due time has passed")
        g.add_metric([], float(db.triggers_due))
        yield g
        g = GaugeMetricFamily("careloop_scheduler_lag_seconds", "How late the most overdue pending trigger is (0 when none)")
        g.add_metric([], max(0.0, now - float(oldest_due)) if oldest_due is not None and oldest_due <= now else 0.0)
        yield g
        g = GaugeMetricFamily("careloop_deliveries", "Deliveries by destination and status (delivered, pending, sending, dead, ...)",
                              labels=["destination", "status"])
        dead: dict[str, float] = {}
        for dest, status, n in db.deliveries:
            g.add_metric([dest, status], float(n))
            if status == DeliveryStatus.DEAD:
                dead[dest] = float(n)
        yield g
        g = GaugeMetricFamily("careloop_dead_letters", "Dead-lettered deliveries (need an operator: fix, then replay)",
                              labels=["destination"])
        for dest in self.rt.ruleset().destinations:
            g.add_metric([dest], dead.pop(dest, 0.0))
        for dest, n_dead in dead.items():
            g.add_metric([dest], n_dead)
        yield g
        g = GaugeMetricFamily("careloop_delivery_confirmations",
                              "Deliveries whose vendor answer is not final, by state: accepted (no lookup documented), pending "
                              "(being confirmed), confirmed, unconfirmed (an alert is open)",
                              labels=["destination", "kind", "state"])
        for c in db.confirmations:
            g.add_metric([c.destination, c.kind, c.confirmation], float(c.rows))
        yield g
        g = GaugeMetricFamily("careloop_destination_circuit_state",
                              "Destination circuit: 0 closed, 1 half-open, 2 open (failures, refused credentials or paused)",
                              labels=["destination"])
        paused_names = db.paused_destinations
        breakers = self.rt.breaker_states()
        for dest in sorted(set(self.rt.ruleset().destinations) | set(breakers) | paused_names):
            state = "open" if dest in paused_names else str(breakers.get(dest, {}).get("state", "closed"))
            g.add_metric([dest], CIRCUIT.get(state, 2.0))
        yield g


class RuntimeCollector(Collector):
    """What this process's workers did since start (counters) and the inbox queue (backpressure)."""

    def __init__(self, runtime: "Runtime") -> None:
        self.rt = runtime

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        rt = self.rt
        c = CounterMetricFamily("careloop_processed_messages", "Inbound messages handled by this process, by outcome",
                                labels=["outcome"])
        counts = rt.worker_counts()
        c.add_metric(["processed"], counts["processed"])
        c.add_metric(["failed"], counts["failed"])
        yield c
        c = CounterMetricFamily("careloop_scheduler_fired", "Triggers fired by this process's scheduler")
        c.add_metric([], counts["fired"])
        yield c
        if rt.worker_process is not None:
            c = CounterMetricFamily("careloop_worker_process_starts",
                                    "Times serve started its worker process (more than 1: it was restarted)")
            c.add_metric([], float(rt.worker_process.starts))
            yield c
        c = CounterMetricFamily("careloop_inbox_queue_waits", "Producers that waited for room in the inbox queue (backpressure)")
        c.add_metric([], float(rt.writer.queue_waits))
        yield c
        g = GaugeMetricFamily("careloop_inbox_queue", "Records waiting for the next group commit")
        g.add_metric([], float(len(rt.writer._queue)))
        yield g
        if rt.writer.spool is not None:
            g = GaugeMetricFamily("careloop_ingest_spool_unmoved",
                                  "Records stored in the ingest spool (SQLite) and not yet copied into the inbox")
            g.add_metric([], float(rt.writer.unmoved))
            yield g
        th = getattr(rt, "auth_throttle", None)
        c = CounterMetricFamily("careloop_auth_failures", "Failed authentications (wrong credentials) seen by this process")
        c.add_metric([], float(th.total if th else 0))
        yield c
        g = GaugeMetricFamily("careloop_auth_throttled_clients", "Client addresses answered 429 after failed authentications")
        g.add_metric([], float(th.throttled_clients(time.monotonic()) if th else 0))
        yield g
        if rt.mllp is not None:
            yield from mllp_families([rt.mllp, *getattr(rt, "extra_mllp", [])])


def mllp_families(listeners: list[Any]) -> Iterator[Any]:
    """Per-listener MLLP series: open connections, refusals and limit closes by reason, junk, buffered bytes."""
    g = GaugeMetricFamily("careloop_mllp_open_connections", "Open MLLP connections", labels=["port"])
    b = GaugeMetricFamily("careloop_mllp_buffered_bytes", "Bytes held by MLLP connections (unfinished frames, "
                          "frames waiting for storage)", labels=["port"])
    r = CounterMetricFamily("careloop_mllp_refused_connections", "MLLP connections refused (caps, allow-lists, "
                            "PROXY header, TLS handshake)", labels=["port", "reason"])
    c = CounterMetricFamily("careloop_mllp_limit_closes", "MLLP connections closed by a limit (frame deadline, "
                            "buffer caps)", labels=["port", "reason"])
    j = CounterMetricFamily("careloop_mllp_junk_records", "Errored records of bytes outside frames", labels=["port"])
    for lst in listeners:
        port = str(lst.port)
        st = lst.stats
        g.add_metric([port], float(st.open_connections))
        b.add_metric([port], float(st.buffered_bytes))
        for reason, n in st.refused.items():
            r.add_metric([port, reason], float(n))
        for reason, n in st.closed.items():
            c.add_metric([port, reason], float(n))
        j.add_metric([port], float(st.junk_records))
    yield from (g, b, r, c, j)


def install(rt: "Runtime") -> None:
    """Register the database and runtime collectors on the runtime's registry (once)."""
    if rt.meters.installed:
        return
    rt.meters.registry.register(DatabaseCollector(rt))
    rt.meters.registry.register(RuntimeCollector(rt))
    rt.meters.installed = True
