"""Durable inbox with group commit: many concurrent producers, one transaction per batch.

A producer awaits :meth:`InboxWriter.store`; it returns only after the batch holding its
record is committed (SQLite ``synchronous=FULL`` or a PostgreSQL commit), so the caller
may then acknowledge. Duplicates (same dedup key and the same bytes) get the ACK stored
the first time and are recorded with status ``duplicate``, never processed twice.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy.engine import Engine

from .db import is_sqlite, write_lock

_COLUMNS = (
    "source", "channel", "received_at", "raw", "sha256", "dedup_key", "control_id",
    "message_type", "status", "error", "ack", "meta", "attempts",
)


@dataclass
class InboundRecord:
    source: str
    channel: str
    raw: bytes
    sha256: str
    status: str
    received_at: float = field(default_factory=time.time)
    dedup_key: str | None = None
    control_id: str | None = None
    message_type: str | None = None
    error: str | None = None
    ack: bytes | None = None
    meta: str | None = None


@dataclass
class StoreResult:
    stored: bool
    duplicate: bool = False
    previous_ack: bytes | None = None
    error: str | None = None


class StoreFailed(Exception):
    """The batch could not be committed; nothing in it is stored."""


class InboxWriter:
    """Group-commit writer. Call :meth:`run` as a task; :meth:`store` from any coroutine."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 512,
        on_commit: Callable[[], None] | None = None,
        fault_hook: Callable[[str], None] | None = None,
        on_stored: Callable[[list[InboundRecord]], None] | None = None,
        max_queue: int = 10_000,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.on_commit = on_commit
        self.on_stored = on_stored
        self.fault_hook = fault_hook
        self._queue: list[tuple[InboundRecord, asyncio.Future[StoreResult]]] = []
        self._wake: asyncio.Event | None = None
        self._conn: Any = None
        ph = "?" if is_sqlite(engine) else "%s"
        self._insert = (
            f"INSERT INTO inbound_message ({', '.join(_COLUMNS)}) VALUES ({', '.join([ph] * len(_COLUMNS))})"
        )
        self._ph = ph
        self.batches = 0
        self.records = 0
        self.max_queue = max_queue  # backpressure bound: producers wait when the queue is this long
        self.queue_waits = 0  # how often a producer waited for room (backpressure engaged)
        self._space: asyncio.Event | None = None
        # one dedicated thread keeps the connection on one thread and avoids the default pool's hand-offs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inbox-commit")

    async def store(self, rec: InboundRecord) -> StoreResult:
        """Queue one record and wait until it is committed (or the batch failed)."""
        if self._wake is None or self._space is None:
            self._wake, self._space = asyncio.Event(), asyncio.Event()
            self._space.set()
        while len(self._queue) >= self.max_queue:
            self.queue_waits += 1
            self._space.clear()
            await self._space.wait()
        fut: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        self._queue.append((rec, fut))
        self._wake.set()
        return await fut

    async def run(self) -> None:
        if self._wake is None or self._space is None:
            self._wake, self._space = asyncio.Event(), asyncio.Event()
            self._space.set()
        try:
            while True:
                await self._wake.wait()
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                if not self._queue:
                    self._wake.clear()
                if len(self._queue) < self.max_queue:
                    self._space.set()
                if not batch:
                    continue
                try:
                    records = [r for r, _ in batch]
                    results = await asyncio.get_running_loop().run_in_executor(self._executor, self.write_batch, records)
                except Exception as exc:  # storage failure -> every producer answers AR
                    self._reset_conn()
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result(StoreResult(stored=False, error=f"{type(exc).__name__}: {exc}"))
                    continue
                for (_, fut), res in zip(batch, results):
                    if not fut.done():
                        fut.set_result(res)
                if self.on_stored:
                    self.on_stored(records)
                if self.on_commit:
                    self.on_commit()
        finally:
            self._executor.submit(self._reset_conn)

    def _reset_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def write_batch(self, records: list[InboundRecord]) -> list[StoreResult]:
        with write_lock(self.engine):
            return self._write_batch(records)

    def _write_batch(self, records: list[InboundRecord]) -> list[StoreResult]:
        """Insert the records in one transaction; resolve duplicates against stored rows."""
        if self._conn is None:
            self._conn = self.engine.raw_connection()
        conn = self._conn
        cur = conn.cursor()
        try:
            keys = sorted({r.dedup_key for r in records if r.dedup_key})
            seen: dict[tuple[str, str], bytes | None] = {}
            if keys:
                for i in range(0, len(keys), 500):
                    chunk = keys[i : i + 500]
                    cur.execute(
                        "SELECT dedup_key, sha256, ack FROM inbound_message WHERE dedup_key IN ("
                        + ", ".join([self._ph] * len(chunk))
                        + ") AND status <> 'duplicate'",
                        chunk,
                    )
                    for k, h, ack in cur.fetchall():
                        seen.setdefault((k, h), bytes(ack) if ack is not None else None)
            results: list[StoreResult] = []
            rows = []
            for r in records:
                dup_ack = None
                dup = False
                if r.dedup_key and (r.dedup_key, r.sha256) in seen:
                    dup, dup_ack = True, seen[(r.dedup_key, r.sha256)]
                    r.status = "duplicate"
                elif r.dedup_key:
                    seen[(r.dedup_key, r.sha256)] = r.ack
                rows.append(tuple(getattr(r, c) if c != "attempts" else 0 for c in _COLUMNS))
                results.append(StoreResult(stored=True, duplicate=dup, previous_ack=dup_ack))
            if self.fault_hook:
                self.fault_hook("inbox.before_commit")
            cur.executemany(self._insert, rows)
            conn.commit()
            if self.fault_hook:
                self.fault_hook("inbox.after_commit")
            self.batches += 1
            self.records += len(records)
            return results
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                pass
            raise
        finally:
            cur.close()
