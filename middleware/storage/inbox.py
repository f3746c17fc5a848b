"""Durable inbox with group commit: many concurrent producers, one transaction per batch.

A producer awaits :meth:`InboxWriter.store` (or, on the MLLP hot path, hands a callback to
:meth:`InboxWriter.submit`); it is answered only after the batch holding its record is
committed (SQLite ``synchronous=FULL`` or a PostgreSQL commit), so the caller may then
acknowledge. Duplicates (same dedup key and the same bytes) get the ACK stored the first
time and are recorded with status ``duplicate``, never processed twice.

One dedicated commit thread takes whatever is queued (up to ``max_batch``), writes it in
one transaction and hands the results back to the event loop with a single
``call_soon_threadsafe`` per batch; while it commits, the next batch gathers in the queue.

On a SQLite file with ``spool=True`` (``careloop serve``) the commit thread writes to the ingest
spool, a database file of its own (:mod:`.spool`), so an ACK never waits for the main database's
one writer; a mover thread copies the spool into ``inbound_message`` and then calls ``on_commit``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

from sqlalchemy.engine import Engine

from .queries.ingest import INBOX_INSERT, INBOX_SEEN, InboundRecord
from .db import synchronous_setting
from .queries import kv
from .schema import sqlite_file
from .spool import MOVE_BATCH, Spool, checkpoint_every, spool_path
from .sql import sqlite_write_lock, unit
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
        spool: bool = False,
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
        db = sqlite_file(engine) if spool else None
        self.spool: Spool | None = None
        if db is not None:
            self.spool = Spool(spool_path(db), insert.order, synchronous=synchronous_setting(engine))
            self.spool.open()
        self._spool_conn: Any = None  # the commit thread's connection to the spool
        self._moved = 0  # the last spool seq copied into inbound_message (set by the mover)
        self._durable = 0  # the last spool seq whose copy is durable: the spool may delete up to it
        self._deleted = 0  # the last spool seq deleted from the spool (commit thread)
        self._mover_bell = threading.Lock()
        self._mover_bell.acquire()
        self.moved = 0  # records moved into inbound_message (after the start-up drain)
        self.spooled = 0  # records this process committed to the spool

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
        if self.spool is not None:
            # what an earlier run committed to the spool and did not move yet goes first
            await asyncio.to_thread(self._move_all, loop)
            self.moved = 0
            if not self.spool.current:
                self.spool.remake(self._durable)
                self._moved = self._durable = self._deleted = 0  # a new table, a new cursor
            threading.Thread(target=self._move_loop, args=(loop, stop), name="inbox-mover", daemon=True).start()
        thread = threading.Thread(target=self._commit_loop, args=(loop, stop), name="inbox-commit", daemon=True)
        thread.start()
        try:
            await loop.create_future()  # until cancelled
        finally:
            stop[0] = True
            self._ring()
            self._ring_mover()

    def _commit_loop(self, loop: asyncio.AbstractEventLoop, stop: list[bool]) -> None:
        q = self._queue
        checkpoint = None
        if self.spool is not None:  # the spool's only writer restarts its WAL, after answering (see spool.py)
            self._spool_conn = self.spool.connect()
            checkpoint = checkpoint_every(lambda: self._spool_conn, 0.25)
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
                    results: list[StoreResult] | None = self._commit_batch(records)
                    error = None
                except Exception as exc:  # storage failure -> every producer answers AR
                    self._reset_conn()
                    results, error = None, f"{type(exc).__name__}: {exc}"
                try:
                    loop.call_soon_threadsafe(self._deliver, batch, records, results, error)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return
                if checkpoint is not None:
                    checkpoint()
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
            if self.spool is not None:
                self._ring_mover()  # it calls on_commit once the rows are in inbound_message
            elif self.on_commit:
                self.on_commit()
        if self._room_waiters and len(self._queue) < self.max_queue:
            self._notify_room()

    def _reset_conn(self) -> None:
        for name in ("_conn", "_spool_conn"):
            conn = getattr(self, name)
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
                setattr(self, name, None)

    def write_batch(self, records: list[InboundRecord]) -> list[StoreResult]:
        """Store ``records`` in ``inbound_message`` now, in one transaction (not through the spool: for
        callers outside the event loop, such as tests and tools)."""
        if self._lock is None:  # PostgreSQL: no process-wide writer to queue behind
            return self._write_batch(records, spooled=False)
        # urgent: producers wait for this commit to ACK, so it goes before processing, scheduler and
        # delivery transactions queued for SQLite's one writer (which also commit early for it)
        self._lock.acquire(urgent=True)
        try:
            return self._write_batch(records, spooled=False)
        finally:
            self._lock.release()

    def _commit_batch(self, records: list[InboundRecord]) -> list[StoreResult]:
        """The commit thread's batch: to the spool when there is one (its own file: no writer to queue
        behind), else into ``inbound_message``."""
        if self.spool is not None:
            return self._write_batch(records, spooled=True)
        return self.write_batch(records)

    def _write_batch(self, records: list[InboundRecord], *, spooled: bool) -> list[StoreResult]:
        """Insert the records in one transaction; resolve duplicates against stored rows (and spooled ones)."""
        if self._conn is None:
            self._conn = self.engine.raw_connection()
        # the DB-API connection itself (the pool's proxy only adds a layer per call)
        main = getattr(self._conn, "driver_connection", None) or self._conn
        conn = main
        if spooled:
            assert self.spool is not None
            if self._spool_conn is None:
                self._spool_conn = self.spool.connect()
            conn = self._spool_conn
        cur = conn.cursor()
        try:
            keys = sorted({r.dedup_key for r in records if r.dedup_key})
            seen: dict[tuple[str, str], bytes | None] = {}
            if keys:  # one statement whatever the number of keys (a list bound as one parameter)
                mcur = main.cursor() if conn is not main else cur
                try:
                    mcur.execute(self._seen.sql, self._seen.params({"keys": keys}))
                    for k, h, ack in mcur.fetchall():
                        seen.setdefault((k, h), bytes(ack) if ack is not None else None)
                finally:
                    if mcur is not cur:
                        mcur.close()
                        main.rollback()  # end the read (no snapshot held between batches)
                if self.spool is not None:
                    # after the main table: a row the mover copied since is still here (only the commit thread deletes)
                    scur = cur if spooled else self.spool.connect()
                    try:
                        for k, h, ack in scur.execute(self.spool.seen_sql, (json.dumps(keys), InboundStatus.DUPLICATE.value)):
                            seen.setdefault((k, h), bytes(ack) if ack is not None else None)
                    finally:
                        if scur is not cur:
                            scur.close()
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
            if spooled:
                assert self.spool is not None
                cur.execute("BEGIN IMMEDIATE")
                moved = self._durable
                if moved > self._deleted:  # rows already in inbound_message leave the spool with this batch
                    cur.execute(self.spool.delete_sql, (moved,))
                cur.executemany(self.spool.insert_sql, rows)
                cur.execute("COMMIT")
                self._deleted = max(self._deleted, moved)
                self.spooled += len(rows)
            else:
                cur.executemany(self._insert, rows)
                conn.commit()
            if self.fault_hook:
                self.fault_hook("inbox.after_commit")
            self.batches += 1
            self.records += len(records)
            return results
        except BaseException:
            try:
                if conn is main:
                    conn.rollback()
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
            except Exception:
                pass
            raise
        finally:
            cur.close()

    @property
    def unmoved(self) -> int:
        """Records committed to the spool and not yet copied into ``inbound_message`` (0 without a spool)."""
        return max(0, self.spooled - self.moved) if self.spool is not None else 0

    # -- the mover (spool -> inbound_message) -----------------------------------
    def _ring_mover(self) -> None:
        try:
            self._mover_bell.release()
        except RuntimeError:  # already rung
            pass

    def _move_loop(self, loop: asyncio.AbstractEventLoop, stop: list[bool]) -> None:
        """Move what the commit thread committed to the spool, each time it rings (and every second)."""
        mover = _Mover(self, loop)
        try:
            while not stop[0]:
                # rows moved but not yet fsync'd are made durable within SYNC_S (then the spool lets them go)
                self._mover_bell.acquire(timeout=SYNC_S if mover.unsynced else 1.0)
                if stop[0]:
                    break
                try:
                    mover.move_all()
                    mover.sync(due_only=True)
                except Exception:
                    log.exception("moving the ingest spool into the inbox failed; retrying")
                    time.sleep(0.5)
            mover.sync(due_only=False)
        finally:
            mover.close()

    def _move_all(self, loop: asyncio.AbstractEventLoop) -> int:
        """Move every committed spool row into ``inbound_message`` now, durably (start-up)."""
        mover = _Mover(self, loop)
        try:
            n = mover.move_all()
            mover.sync(due_only=False)
            return n
        finally:
            mover.close()


#: the longest a moved row waits for the fsync that lets the spool delete it
SYNC_S = 0.02


class _Mover:
    """Copies spool rows into ``inbound_message``, each pass a non-durable unit of work
    (``unit(durable=False)``: no fsync). The rows stay in the spool (durable) until a later durable
    commit (:meth:`sync`, at most :data:`SYNC_S` later, or any FULL commit of another writer: the WAL
    is synced in order) has made the move durable; only then may the commit thread delete them. A
    power loss in between loses the move and its cursor together, and the rows are moved again: once.
    So the ACK path pays one fsync per batch (the spool's), not two."""

    def __init__(self, writer: "InboxWriter", loop: asyncio.AbstractEventLoop) -> None:
        assert writer.spool is not None
        self.w = writer
        self.spool = writer.spool
        self.loop = loop
        self.scon = self.spool.connect()
        # columns the INSERT itself has a value for: an older spool's NULL there takes that value
        self.defaults = set(INBOX_INSERT.compiled_for("sqlite").constants) & set(self.spool.columns)
        self.unsynced = False
        self.last_sync = time.monotonic()

    def close(self) -> None:
        self.scon.close()

    def _values(self, row: tuple[Any, ...]) -> dict[str, Any]:
        values = dict(zip(self.spool.columns, row))
        for name in self.defaults:
            if values[name] is None:
                del values[name]
        return values

    def move_all(self) -> int:
        """Copy every committed spool row after the cursor (one transaction per :data:`~.spool.MOVE_BATCH`
        rows, with the cursor); ``on_commit`` on the loop after each. Returns the rows copied."""
        w, spool = self.w, self.spool
        total = 0
        while True:
            rows = spool.pending(self.scon, w._moved, MOVE_BATCH)
            if not rows:
                return total
            last = int(rows[-1][0])
            with unit(w.engine, write=True, durable=False) as u:
                done = int(kv.get(u, spool.cursor_key) or 0)
                values = [self._values(row[1:]) for row in rows if row[0] > done]
                u.many(INBOX_INSERT, values)
                if last > done:
                    kv.put(u, spool.cursor_key, str(last), time.time())
            w._moved = max(w._moved, last, done)
            self.unsynced = True  # (rows an earlier run moved, too: its last commit may not have been synced)
            w.moved += len(values)
            total += len(values)
            if values and w.on_commit is not None:
                try:
                    self.loop.call_soon_threadsafe(w.on_commit)
                except RuntimeError:  # the loop is closed
                    return total

    def sync(self, *, due_only: bool) -> None:
        """Make the moves so far durable (one durable commit), then let the spool delete them."""
        if not self.unsynced or (due_only and time.monotonic() - self.last_sync < SYNC_S):
            return
        w = self.w
        moved = w._moved
        with unit(w.engine, write=True) as u:  # its commit syncs the WAL: this commit and every one before it
            kv.put(u, self.spool.cursor_key, str(moved), time.time())
        w._durable = max(w._durable, moved)
        self.unsynced = False
        self.last_sync = time.monotonic()


def _getter(order: tuple[str, ...], constants: Any) -> Callable[[InboundRecord], tuple[Any, ...]]:
    """A function from a record to the INSERT's parameters (``attempts`` and such from the statement)."""
    fields = {f.name for f in dataclasses.fields(InboundRecord)}
    if all(name in fields for name in order):
        get = attrgetter(*order)
        return get if len(order) > 1 else lambda r: (get(r),)
    fixed = [(name in fields, name if name in fields else constants[name]) for name in order]
    return lambda r: tuple(getattr(r, v) if is_field else v for is_field, v in fixed)
