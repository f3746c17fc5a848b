"""Issue 16: the ingest spool. On SQLite, ``serve`` with its worker commits each batch of messages to a
database file of its own (``<database>-ingest``), so an ACK never waits for the main database's one
writer; a mover thread copies the rows into ``inbound_message`` in order, exactly once.

These tests run the real ``InboxWriter`` on real SQLite files: a writer of the main database is
another real connection holding SQLite's write lock.
"""
from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter, StoreResult
from middleware.storage.queries.ingest import INBOX_INSERT
from middleware.storage.spool import Spool, spool_path



def _rec(n: int, key: str | None = None, body: bytes | None = None) -> InboundRecord:
    raw = body or f"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|CTRL{n}|P|2.5\r".encode()
    return InboundRecord(source="default", channel="mllp", raw=raw, sha256=hashlib.sha256(raw).hexdigest(),
                         status="received", dedup_key=key or f"default|CTRL{n}", control_id=f"CTRL{n}",
                         message_type="ADT^A01", ack=b"ACK" + str(n).encode())


def _db(tmp_path: Path) -> tuple[Any, Path]:
    path = tmp_path / "careloop.db"
    engine = make_engine(f"sqlite:///{path}")
    init_db(engine)
    return engine, path


def _rows(path: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(path)
    try:
        return [(r[0], r[1]) for r in con.execute("SELECT control_id, status FROM inbound_message ORDER BY id")]
    finally:
        con.close()


def _spooled(path: Path) -> int:
    con = sqlite3.connect(spool_path(path))
    try:
        return int(con.execute("SELECT count(*) FROM spool").fetchone()[0])
    finally:
        con.close()


def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _running(writer: InboxWriter, body: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``body`` on a loop where ``writer.run()`` is running."""
    async def main() -> Any:
        task = asyncio.create_task(writer.run())
        await asyncio.sleep(0)
        try:
            return await body()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return asyncio.run(main())


class _MainWriter:
    """Another connection holding the main database's write lock (a processing batch, say)."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.con.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.con.execute("COMMIT")
        self.con.close()


@pytest.mark.parametrize("spool", [True, False])
def test_an_ack_waits_for_the_spool_not_for_the_main_databases_writer(tmp_path: Path, spool: bool) -> None:
    engine, path = _db(tmp_path)
    writer = InboxWriter(engine, spool=spool)
    hold = _MainWriter(path)
    threading.Timer(1.0, hold.release).start()

    async def body() -> tuple[StoreResult, float]:
        t0 = time.monotonic()
        res = await writer.store(_rec(1))
        took = time.monotonic() - t0
        await asyncio.to_thread(_until, lambda: _rows(path) == [("CTRL1", "received")])
        return res, took

    res, took = _running(writer, body)
    assert res.stored and not res.duplicate
    if spool:
        assert took < 0.5, f"the ACK waited {took:.2f} s for the main database's writer"
    else:  # without the spool the commit queues behind the other writer (the reason for the spool)
        assert took >= 0.9


def test_the_mover_copies_in_order_once_the_main_writer_lets_go(tmp_path: Path) -> None:
    engine, path = _db(tmp_path)
    woken: list[int] = []
    writer = InboxWriter(engine, spool=True, on_commit=lambda: woken.append(1))
    hold = _MainWriter(path)

    async def body() -> list[StoreResult]:
        results = [await writer.store(_rec(n)) for n in range(1, 6)]
        await asyncio.sleep(0.2)
        assert _rows(path) == []  # committed to the spool only: the main database is still locked
        assert _spooled(path) == 5
        hold.release()
        await asyncio.to_thread(_until, lambda: len(_rows(path)) == 5)
        return results

    results = _running(writer, body)
    assert all(r.stored for r in results)
    assert _rows(path) == [(f"CTRL{n}", "received") for n in range(1, 6)]
    assert woken, "the mover wakes processing (on_commit) after copying"


def test_a_duplicate_is_found_in_the_spool_and_in_the_inbox(tmp_path: Path) -> None:
    engine, path = _db(tmp_path)
    writer = InboxWriter(engine, spool=True)
    hold = _MainWriter(path)

    async def body() -> tuple[StoreResult, StoreResult, StoreResult]:
        first = await writer.store(_rec(1))
        again = await writer.store(_rec(1))  # the original is still in the spool
        hold.release()
        await asyncio.to_thread(_until, lambda: len(_rows(path)) == 2)
        third = await writer.store(_rec(1))  # the original is in inbound_message now
        await asyncio.to_thread(_until, lambda: len(_rows(path)) == 3)
        return first, again, third

    first, again, third = _running(writer, body)
    assert not first.duplicate
    assert again.duplicate and again.previous_ack == b"ACK1"
    assert third.duplicate and third.previous_ack == b"ACK1"
    assert _rows(path) == [("CTRL1", "received"), ("CTRL1", "duplicate"), ("CTRL1", "duplicate")]


def test_rows_left_in_the_spool_are_moved_at_start_exactly_once(tmp_path: Path) -> None:
    engine, path = _db(tmp_path)
    crashed = InboxWriter(engine, spool=True)
    crashed._commit_batch([_rec(1), _rec(2), _rec(3)])  # committed (ACKed); the process dies before its mover ran
    crashed._reset_conn()
    assert _rows(path) == [] and _spooled(path) == 3

    async def nothing() -> None:
        await asyncio.sleep(0.1)

    for _ in range(2):  # a second start finds them moved (the cursor), whatever the spool still holds
        _running(InboxWriter(engine, spool=True), nothing)
        assert _rows(path) == [("CTRL1", "received"), ("CTRL2", "received"), ("CTRL3", "received")]


def test_moved_rows_leave_the_spool_only_after_a_synced_commit(tmp_path: Path) -> None:
    from middleware.storage.inbox import _Mover

    engine, path = _db(tmp_path)
    writer = InboxWriter(engine, spool=True)
    writer._commit_batch([_rec(1), _rec(2)])
    loop = asyncio.new_event_loop()
    mover = _Mover(writer, loop)
    try:
        assert mover.move_all() == 2
        assert len(_rows(path)) == 2 and mover.unsynced
        writer._commit_batch([_rec(3)])
        assert _spooled(path) == 3, "not yet synced: the spool keeps the moved rows"
        mover.sync(due_only=False)
        writer._commit_batch([_rec(4)])
        assert _spooled(path) == 2, "synced: the next batch deletes the moved rows"
        assert mover.move_all() == 2
        assert [c for c, _ in _rows(path)] == ["CTRL1", "CTRL2", "CTRL3", "CTRL4"]
    finally:
        mover.close()
        writer._reset_conn()
        loop.close()


def test_a_new_spool_file_is_moved_from_its_start(tmp_path: Path) -> None:
    """The cursor belongs to one spool file (its id): a spool made again is not skipped."""
    engine, path = _db(tmp_path)

    async def nothing() -> None:
        await asyncio.sleep(0.1)

    first = InboxWriter(engine, spool=True)
    first._commit_batch([_rec(1), _rec(2)])
    first._reset_conn()
    _running(InboxWriter(engine, spool=True), nothing)
    for suffix in ("", "-wal", "-shm"):
        Path(str(spool_path(path)) + suffix).unlink(missing_ok=True)
    second = InboxWriter(engine, spool=True)
    second._commit_batch([_rec(3)])
    second._reset_conn()
    _running(InboxWriter(engine, spool=True), nothing)
    assert [c for c, _ in _rows(path)] == ["CTRL1", "CTRL2", "CTRL3"]


def test_a_spool_of_another_release_is_drained_then_made_again(tmp_path: Path) -> None:
    engine, path = _db(tmp_path)
    columns = INBOX_INSERT.compiled_for("sqlite").order
    older = [c for c in columns if c != "meta"]  # a release before `meta`
    con = sqlite3.connect(spool_path(path))
    con.execute("CREATE TABLE spool_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    con.execute("INSERT INTO spool_meta VALUES ('id', 'older')")
    con.execute(f"CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, {', '.join(older)})")
    rec = _rec(7)
    values = {c: getattr(rec, c, None) for c in older}
    con.execute(f"INSERT INTO spool ({', '.join(older)}) VALUES ({', '.join('?' for _ in older)})",
                [values[c] if values[c] is not None else INBOX_INSERT.compiled_for("sqlite").constants.get(c) for c in older])
    con.commit()
    con.close()

    async def store_one() -> StoreResult:
        res = await writer.store(_rec(8))
        await asyncio.to_thread(_until, lambda: [c for c, _ in _rows(path)] == ["CTRL7", "CTRL8"])
        return res

    writer = InboxWriter(engine, spool=True)
    assert _running(writer, store_one).stored
    spool = Spool(spool_path(path), columns)
    spool.open()
    assert spool.current, "made again with this release's columns"


def test_write_batch_stores_in_the_inbox_at_once_and_sees_spooled_duplicates(tmp_path: Path) -> None:
    """``write_batch`` (tests, tools: no event loop, no mover) writes ``inbound_message`` itself."""
    engine, path = _db(tmp_path)
    writer = InboxWriter(engine, spool=True)
    writer._commit_batch([_rec(1)])  # in the spool, not moved
    res = writer.write_batch([_rec(1), _rec(2)])
    writer._reset_conn()
    assert [r.duplicate for r in res] == [True, False]
    assert _rows(path) == [("CTRL1", "duplicate"), ("CTRL2", "received")]


def test_postgresql_and_memory_databases_have_no_spool(tmp_path: Path) -> None:
    engine = make_engine("sqlite://")
    assert InboxWriter(engine, spool=True).spool is None
