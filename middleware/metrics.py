"""Process-local Prometheus meters (a leaf: imports no stage).

One :class:`Meters` per running process, on its own registry (so tests can run several
runtimes in one interpreter). Counts that must agree across replicas (backlog, lag,
pending and due triggers, deliveries by status, dead letters) are read from the
database at scrape time by ``api/metrics.py``; this module holds what only the process
knows: what it stored, how many commits (fsyncs) that took, and ACK latency.
"""
from __future__ import annotations

from typing import Iterable, Protocol

from prometheus_client import CollectorRegistry, Counter


class StoredRecord(Protocol):
    @property
    def source(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def status(self) -> str: ...


class Meters:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.installed = False  # the database collectors are added by api/metrics.install()
        self.ingested = Counter(
            "careloop_ingest_messages", "Inbound messages durably stored, by source, channel and stored status",
            ["source", "channel", "status"], registry=self.registry,
        )
        self.commits = Counter(
            "careloop_inbox_commits", "Inbox group commits (each one fsync on SQLite FULL / one PostgreSQL commit)",
            registry=self.registry,
        )
        self.store_failures = Counter(
            "careloop_inbox_store_failures", "Inbox batches that could not be committed (producers answered AR / 5xx)",
            registry=self.registry,
        )

    def on_stored(self, records: Iterable[StoredRecord]) -> None:
        """Called by the inbox writer after each commit."""
        self.commits.inc()
        for r in records:
            self.ingested.labels(r.source, r.channel, r.status).inc()
