"""The database figures of ``GET /metrics`` are read off the scrape's path (``collectors.FigureCache``):
a scrape waits at most ``WAIT_S`` for them, reads are paced to a share of the time, a failed read keeps
the last figures. At 10 M pending triggers one read takes seconds (docs/benchmarks.md, section 10)."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from middleware import collectors
from middleware.collectors import DatabaseCollector, FigureCache
from middleware.storage.queries.metrics import Backlog, DatabaseFigures, DeliveryCount


def figures(pending: int) -> DatabaseFigures:
    return DatabaseFigures(backlog=Backlog(None, 0), triggers_pending=pending, triggers_due=0, oldest_due_at=None,
                           deliveries=(DeliveryCount("webhook", "delivered", 3),), paused_destinations=frozenset())


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_slow_read_never_holds_a_scrape_and_the_next_scrape_gets_its_figures() -> None:
    gate = threading.Event()
    cache = FigureCache(lambda now: (gate.wait(10), figures(7))[1], wait_s=0.2)
    t0 = time.monotonic()
    assert cache.get() == (None, None)  # the read is still running: nothing to show yet
    assert time.monotonic() - t0 < 1.0
    gate.set()
    deadline = time.monotonic() + 5
    while cache.reads == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    got, read_at = cache.get()
    assert got is not None and got.triggers_pending == 7 and read_at is not None and read_at <= time.time()


def test_reads_are_paced_to_a_tenth_of_the_time_and_a_failure_keeps_the_last_figures() -> None:
    clock = Clock()
    calls: list[float] = []
    outcome: list[object] = [figures(1)]

    def read(now: float) -> DatabaseFigures:
        calls.append(now)
        clock.t += 2.0  # this read "took" 2 s
        value = outcome[0]
        if isinstance(value, Exception):
            raise value
        assert isinstance(value, DatabaseFigures)
        return value

    cache = FigureCache(read, wait_s=5.0, clock=clock)
    assert cache.get()[0] == figures(1) and len(calls) == 1
    assert cache.last_read_s == 2.0
    outcome[0] = figures(2)
    clock.t += 17.9  # 18 s of pause after a 2 s read (10 % duty): not yet
    assert cache.get()[0] == figures(1) and len(calls) == 1
    clock.t += 0.2
    assert cache.get()[0] == figures(2) and len(calls) == 2
    outcome[0] = RuntimeError("database is locked")
    clock.t += 18.1
    got, _ = cache.get()
    assert len(calls) == 3 and got == figures(2)  # the failed read left the last figures in place


def test_the_collector_answers_within_the_wait_and_reports_the_figures_age(monkeypatch) -> None:
    gate = threading.Event()
    monkeypatch.setattr(collectors, "database_figures", lambda engine, now: (gate.wait(10), figures(10_000_000))[1])
    rt = SimpleNamespace(engine=None, ruleset=lambda: SimpleNamespace(destinations={"webhook": None}),
                         delivery=SimpleNamespace(breakers={}), breaker_states=lambda: {})
    registry = CollectorRegistry(auto_describe=True)
    collector = DatabaseCollector(rt)  # type: ignore[arg-type]
    registry.register(collector)
    assert collector.cache.reads == 0  # registering reads nothing (it happens at start-up for `worker --metrics-port`)

    def scrape() -> dict[str, float]:
        t0 = time.monotonic()
        text = generate_latest(registry).decode()
        assert time.monotonic() - t0 < 1.0
        return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}

    assert "careloop_triggers_pending" not in scrape()  # first read still running
    gate.set()
    deadline = time.monotonic() + 5
    while collector.cache.reads == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    m = scrape()
    assert m["careloop_triggers_pending"] == 10_000_000
    assert 0 <= m["careloop_database_figures_age_seconds"] < 5
    assert m["careloop_database_figures_read_seconds"] > 0
