"""Prometheus collectors of a running careloop: figures read from the shared database at scrape
time (every replica reports the same backlog, lag, trigger and delivery figures: alert on ``max``
across replicas, not ``sum``) and this process's worker counters. Served by the API's
``GET /metrics`` and by ``careloop worker --metrics-port``; below both (neither imports the other).
Counts and destination names only, no PHI.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .storage.queries.metrics import database_figures
from .storage.statuses import DeliveryStatus

if TYPE_CHECKING:
    from .service import Runtime

CIRCUIT = {"closed": 0.0, "half-open": 1.0, "open": 2.0, "open-auth": 2.0}


class DatabaseCollector(Collector):
    """Backlog, lag, triggers, deliveries, dead letters and circuit state, read at scrape time."""

    def __init__(self, runtime: "Runtime") -> None:
        self.rt = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        db = database_figures(self.rt.engine, now)
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
