"""Durable inbox with group commit: many concurrent producers, one transaction per batch.

A producer awaits :meth:`InboxWriter.store` (or, on the MLLP hot path, hands a callback to
:meth:`InboxWriter.submit`); it is answered only after the batch holding its record is
committed (SQLite ``synchronous=FULL`` or a PostgreSQL commit), so the caller may then
acknowledge. Duplicates (same dedup key and the same bytes) get the ACK stored the first
time and are recorded with status ``duplicate``, never processed twice.

One dedicated commit thread takes whatever is queued (up to ``max_batch``), writes it in
one transaction and hands the results back to the event loop with a single
``call_soon_threadsafe`` per batch; while it commits, the next batch gathers in the queue.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

from sqlalchemy.engine import Engine

from .queries.ingest import INBOX_INSERT, INBOX_SEEN, InboundRecord
from .sql import sqlite_write_lock
from .statuses import InboundStatus

log = logging.getLogger("careloop.inbox")

__all__ = ["InboundRecord", "InboxWriter", "StoreFailed", "StoreResult"]


@dataclass
class StoreResult:
    stored: bool
    duplicate: bool = False
    previous_ack: bytes | None = None
    error: str | None = None


class StoreFailed(Exception):
    """The batch could not be committed; nothing in it is stored."""


Done = Callable[[StoreResult], None]


class InboxWriter:
    """Group-commit writer. Call :meth:`run` as a task; :meth:`store` from any coroutine,
    :meth:`submit` (callback, no task or future) from protocol callbacks on the same loop."""

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
        # records waiting for the next batch, each with the callback that answers its producer
        self._queue: list[tuple[InboundRecord, Done]] = []
        # The commit thread sleeps on ``_bell`` (a lock held while nobody rang) when the queue is
        # empty and says so in ``_idle``; a producer that finds it idle rings once. A plain lock's
        # release is one C call, where a Condition's notify is a page of Python per record.
        self._bell = threading.Lock()
        self._bell.acquire()
        self._idle = False
        self._conn: Any = None
        # the registry's statements for this dialect; a record's values in the INSERT's parameter order
        insert = INBOX_INSERT.compiled_for(engine.dialect.name)
        self._insert = insert.sql
        self._row_of = _getter(insert.order, insert.constants)
        self._seen = INBOX_SEEN.compiled_for(engine.dialect.name)
        self.batches = 0
        self.records = 0
        self.max_queue = max_queue  # backpressure bound: producers wait when the queue is this long
        self.queue_waits = 0  # how often a producer waited for room (backpressure engaged)
        self._room_waiters: list[Callable[[], None]] = []  # called on the loop when the queue has room again
        self._after_batch: list[Callable[[], None]] = []  # one-shot, after a batch's producers are answered
        self._lock = sqlite_write_lock(engine)  # the lock write_lock() takes, looked up once

    # -- producers (event-loop thread) --------------------------------------
    def has_room(self) -> bool:
        return len(self._queue) < self.max_queue

    def when_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once, on the loop) when the queue is below ``max_queue`` again."""
        self._room_waiters.append(callback)

    def submit(self, rec: InboundRecord, done: Done) -> None:
        """Queue one record without waiting; ``done(result)`` runs on the event loop once the batch
        holding it is committed (or failed). Callers honour backpressure with :meth:`has_room` /
        :meth:`when_room` first."""
        self._queue.append((rec, done))
        if self._idle:
            self._ring()

    def _ring(self) -> None:
        self._idle = False
        try:
            self._bell.release()
        except RuntimeError:  # already rung (two producers at once): one ring wakes it
            pass

    def after_batch(self, callback: Callable[[], None]) -> None:
        """From a ``submit`` callback: run ``callback`` once every producer of the batch being
        answered has been answered (a listener writes one reply per connection per batch)."""
        self._after_batch.append(callback)

    async def store(self, rec: InboundRecord) -> StoreResult:
        """Queue one record and wait until it is committed (or the batch failed)."""
        loop = asyncio.get_running_loop()
        while len(self._queue) >= self.max_queue:
            self.queue_waits += 1
            room: asyncio.Future[None] = loop.create_future()

            def make_room() -> None:
                if not room.done():  # noqa: B023 (awaited below)
                    room.set_result(None)  # noqa: B023 (awaited below)

            self._room_waiters.append(make_room)
            await room
        fut: asyncio.Future[StoreResult] = loop.create_future()

        def done(res: StoreResult) -> None:
            if not fut.done():
                fut.set_result(res)

        self.submit(rec, done)
        return await fut

    def _notify_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for cb in waiters:
            try:
                cb()
            except Exception:
                log.exception("inbox room callback failed")

    # -- the commit thread ----------------------------------------------------
    async def run(self) -> None:
        """Run the commit thread until this task is cancelled."""
        loop = asyncio.get_running_loop()
        stop = [False]  # the commit thread's stop flag
        thread = threading.Thread(target=self._commit_loop, args=(loop, stop), name="inbox-commit", daemon=True)
        thread.start()
        try:
            await loop.create_future()  # until cancelled
        finally:
            stop[0] = True
            self._ring()

    def _commit_loop(self, loop: asyncio.AbstractEventLoop, stop: list[bool]) -> None:
        q = self._queue
        try:
            while True:
                while not q and not stop[0]:
                    self._bell.acquire(False)  # forget a ring that found work already taken
                    self._idle = True
                    if not q and not stop[0]:  # re-check: a record queued before _idle was seen
                        self._bell.acquire()
                    self._idle = False
                if stop[0]:
                    return
                # only this thread takes from the front; producers append at the end
                before = len(q)
                batch = q[: self.max_batch]
                del q[: self.max_batch]
                after = len(q)
                if before >= self.max_queue > after:
                    loop.call_soon_threadsafe(self._notify_room)
                records = [r for r, _ in batch]
                try:
                    results: list[StoreResult] | None = self.write_batch(records)
                    error = None
                except Exception as exc:  # storage failure -> every producer answers AR
                    self._reset_conn()
                    results, error = None, f"{type(exc).__name__}: {exc}"
                try:
                    loop.call_soon_threadsafe(self._deliver, batch, records, results, error)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return
        finally:
            self._reset_conn()

    def _deliver(
        self, batch: list[tuple[InboundRecord, Done]], records: list[InboundRecord],
        results: list[StoreResult] | None, error: str | None,
    ) -> None:
        """On the loop: answer every producer of one batch, then the commit listeners."""
        if results is None:
            for _, done in batch:
                try:
                    done(StoreResult(stored=False, error=error))
                except Exception:
                    log.exception("inbox callback failed")
        else:
            for (_, done), res in zip(batch, results):
                try:
                    done(res)
                except Exception:
                    log.exception("inbox callback failed")
        if self._after_batch:
            after, self._after_batch = self._after_batch, []
            for cb in after:
                try:
                    cb()
                except Exception:
                    log.exception("inbox after-batch callback failed")
        if results is not None:
            if self.on_stored:
                self.on_stored(records)
            if self.on_commit:
                self.on_commit()
        if self._room_waiters and len(self._queue) < self.max_queue:
            self._notify_room()

    def _reset_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def write_batch(self, records: list[InboundRecord]) -> list[StoreResult]:
        if self._lock is None:  # PostgreSQL: no process-wide writer to queue behind
            return self._write_batch(records)
        # urgent: producers wait for this commit to ACK, so it goes before processing, scheduler and
        # delivery transactions queued for SQLite's one writer (which also commit early for it)
        self._lock.acquire(urgent=True)
        try:
            return self._write_batch(records)
        finally:
            self._lock.release()

    def _write_batch(self, records: list[InboundRecord]) -> list[StoreResult]:
        """Insert the records in one transaction; resolve duplicates against stored rows."""
        if self._conn is None:
            self._conn = self.engine.raw_connection()
        # the DB-API connection itself (the pool's proxy only adds a layer per call)
        conn = getattr(self._conn, "driver_connection", None) or self._conn
        cur = conn.cursor()
        try:
            keys = sorted({r.dedup_key for r in records if r.dedup_key})
            seen: dict[tuple[str, str], bytes | None] = {}
            if keys:  # one statement whatever the number of keys (a list bound as one parameter)
                cur.execute(self._seen.sql, self._seen.params({"keys": keys}))
                for k, h, ack in cur.fetchall():
                    seen.setdefault((k, h), bytes(ack) if ack is not None else None)
            results: list[StoreResult] = []
            rows = []
            row_of = self._row_of
            for n, r in enumerate(records):
                key = r.dedup_key
                if key and seen:
                    pair = (key, r.sha256)
                    if pair in seen:
                        r = records[n] = dataclasses.replace(r, status=InboundStatus.DUPLICATE)
                        rows.append(row_of(r))
                        results.append(StoreResult(stored=True, duplicate=True, previous_ack=seen[pair]))
                        continue
                if key:
                    seen[(key, r.sha256)] = r.ack
                rows.append(row_of(r))
                results.append(StoreResult(stored=True))
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


def _getter(order: tuple[str, ...], constants: Any) -> Callable[[InboundRecord], tuple[Any, ...]]:
    """A function from a record to the INSERT's parameters (``attempts`` and such from the statement)."""
    fields = {f.name for f in dataclasses.fields(InboundRecord)}
    if all(name in fields for name in order):
        get = attrgetter(*order)
        return get if len(order) > 1 else lambda r: (get(r),)
    fixed = [(name in fields, name if name in fields else constants[name]) for name in order]
    return lambda r: tuple(getattr(r, v) if is_field else v for is_field, v in fixed)
