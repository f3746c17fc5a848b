"""Issue 16: ingest never waits for processing on SQLite's one writer.

* the inbox's commits are *urgent* waiters of the process's write lock: served before ordinary
  waiters (processing, scheduler, delivery) that asked earlier, unless one has waited ``starve_s``;
* a processing batch commits early when an urgent writer waits (after at least one message);
* HL7 messages are normalized before the batch takes the write lock, with the same outcome;
* the service's commits run no WAL checkpoint; checkpoints run on their own connection;
* an idle worker step (nothing waiting, nothing due) reads and returns without the write lock.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from middleware.config.sources import Sources
from middleware.listeners.hl7_ingest import prepare_hl7
from middleware.pipeline import process as process_mod
from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.storage import sql
from middleware.storage.db import checkpoints_off_the_write_path, init_db, make_engine, wal_checkpoint
from middleware.storage.inbox import InboxWriter

REPO = Path(__file__).resolve().parents[2]


def _queued(lock: sql.WriteLock, ordinary: int = 0, urgent: int = 0) -> None:
    deadline = time.monotonic() + 5
    while (len(lock._queue) < ordinary or len(lock._urgent) < urgent) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(lock._queue) >= ordinary and len(lock._urgent) >= urgent


def test_an_urgent_waiter_goes_before_ordinary_waiters_that_asked_earlier() -> None:
    lock = sql.WriteLock(starve_s=10)
    order: list[str] = []

    def take(name: str, urgent: bool) -> None:
        lock.acquire(urgent=urgent)
        order.append(name)
        lock.release()

    lock.acquire()
    threads = [threading.Thread(target=take, args=("processing", False))]
    threads[0].start()
    _queued(lock, ordinary=1)
    assert not lock.urgent_waiting
    threads.append(threading.Thread(target=take, args=("inbox", True)))
    threads[1].start()
    _queued(lock, ordinary=1, urgent=1)
    assert lock.urgent_waiting
    lock.release()
    for t in threads:
        t.join(5)
    assert order == ["inbox", "processing"]
    assert not lock.urgent_waiting


def test_an_ordinary_waiter_is_not_starved_by_urgent_ones() -> None:
    """Past ``starve_s`` of waiting, the ordinary waiter goes before a later urgent one."""
    lock = sql.WriteLock(starve_s=0.05)
    order: list[str] = []

    def take(name: str, urgent: bool) -> None:
        lock.acquire(urgent=urgent)
        order.append(name)
        lock.release()

    lock.acquire()
    first = threading.Thread(target=take, args=("processing", False))
    first.start()
    _queued(lock, ordinary=1)
    time.sleep(0.1)  # longer than starve_s
    second = threading.Thread(target=take, args=("inbox", True))
    second.start()
    _queued(lock, ordinary=1, urgent=1)
    lock.release()
    first.join(5)
    second.join(5)
    assert order == ["processing", "inbox"]


SIU = ("MSH|^~\\&|SCHED|HOSP|CARELOOP|CL|20240301090000+0000||SIU^S12^SIU_S12|IF{n}|P|2.5.1\r"
       "SCH|P{n}^SCHED|F{n}^SCHED||||FOLLOWUP^Follow-up^LOCAL|||30|MIN|^^30^20300301100000+0000^20300301103000+0000"
       "||||||||||||||Booked\r"
       "PID|1||MRNIF{n}^^^HOSP^MR||TESTPATIENT^FIRST||19700101|F\r"
       "RGS|1\r"
       "AIS|1||CLINIC^Clinic visit^LOCAL|20300301100000+0000|||30|MIN\r")


@pytest.fixture
def stored(tmp_path: Path):
    """Four SIU messages stored on SQLite (``received``), and the shipped rule set."""
    engine = make_engine(f"sqlite:///{tmp_path}/if.db")
    init_db(engine)
    rs, _ = load_ruleset(REPO / "mappings")
    assert rs is not None
    sources: Sources = rs.sources
    writer = InboxWriter(engine)
    results = writer.write_batch([prepare_hl7(SIU.format(n=n).encode(), channel="mllp", port=None, sources=sources).record
                                  for n in range(4)])
    assert all(r.stored and not r.duplicate for r in results)
    yield engine, rs
    engine.dispose()


def _statuses(engine) -> list[str]:  # type: ignore[no-untyped-def]
    import sqlite3

    con = sqlite3.connect(str(engine.url.database))
    try:
        return [r[0] for r in con.execute("SELECT status FROM inbound_message ORDER BY id")]
    finally:
        con.close()


def test_a_processing_batch_commits_early_when_an_inbox_commit_waits(stored) -> None:  # type: ignore[no-untyped-def]
    engine, rs = stored
    lock = sql.sqlite_write_lock(engine)
    assert lock is not None
    proc = Processor(engine, lambda: rs, budget_s=60.0)  # no time budget: only the waiting inbox ends the batch
    inner = proc.handlers["mllp"]
    got_lock: list[float] = []
    finished: list[float] = []

    def inbox_commit() -> None:
        lock.acquire(urgent=True)
        got_lock.append(time.monotonic())
        lock.release()

    waiter: list[threading.Thread] = []

    def handler(u, msg, rs_, now):  # type: ignore[no-untyped-def]
        out = inner(u, msg, rs_, now)
        if not waiter:  # during the first message an ingest commit arrives
            t = threading.Thread(target=inbox_commit)
            t.start()
            waiter.append(t)
            _queued(lock, urgent=1)
        finished.append(time.monotonic())
        return out

    proc.handlers["mllp"] = handler
    assert proc.run_once() == 1  # one message, then the batch committed for the waiting inbox
    waiter[0].join(5)
    assert got_lock and len(finished) == 1
    assert _statuses(engine) == ["processed", "received", "received", "received"]
    assert proc.drain() == 3  # nothing lost: the rest are processed in later batches, in order
    assert _statuses(engine) == ["processed"] * 4


def test_hl7_is_normalized_before_the_batch_takes_the_write_lock(stored, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    engine, rs = stored
    lock = sql.sqlite_write_lock(engine)
    assert lock is not None
    held: list[bool] = []
    real = process_mod.normalize_item

    def spy(msg, rs_):  # type: ignore[no-untyped-def]
        held.append(lock._owner is not None)
        return real(msg, rs_)

    monkeypatch.setattr(process_mod, "normalize_item", spy)
    proc = Processor(engine, lambda: rs, budget_s=60.0)
    assert proc.drain() == 4
    assert held == [False] * 4  # every message normalized with the write lock free, once
    assert _statuses(engine) == ["processed"] * 4
    from sqlalchemy import text

    with engine.connect() as c:  # the same outcome as inline normalization: one reminder trigger each
        n = c.execute(text("SELECT count(*) FROM \"trigger\" WHERE rule_id = 'appointment-reminder-72h'")).scalar()
    assert n == 4


def test_service_commits_run_no_checkpoint_and_checkpoints_run_apart(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/ck.db")
    init_db(engine)
    assert checkpoints_off_the_write_path(engine) is True
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    writer = InboxWriter(engine)
    from middleware.storage.inbox import InboundRecord

    for i in range(30):
        writer.write_batch([InboundRecord(source="default", channel="mllp", raw=b"MSH|x" * 200, sha256=f"{i:064d}",
                                          status="ignored", dedup_key=f"k{i}", control_id=str(i), message_type="X")])
    wal = Path(f"{tmp_path}/ck.db-wal")
    assert wal.exists() and wal.stat().st_size > 0
    busy, pages, done = wal_checkpoint(engine)
    assert busy == 0 and pages > 0 and done == pages  # everything copied by the checkpoint, no commit did it
    assert checkpoints_off_the_write_path(make_engine("sqlite://")) is False  # in-memory: untouched
    engine.dispose()


def _returns_while_the_write_lock_is_held(engine, step) -> int:  # type: ignore[no-untyped-def]
    """Run ``step`` while another thread holds the process's write lock; what it returned, within 5 s."""
    lock = sql.sqlite_write_lock(engine)
    assert lock is not None
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    out: list[int] = []
    stepper = threading.Thread(target=lambda: out.append(step()))
    stepper.start()
    stepper.join(5)
    blocked = stepper.is_alive()
    done.set()
    holder.join(5)
    stepper.join(5)
    assert not blocked, "the step waited for the write lock"
    return out[0]


def test_an_idle_worker_step_takes_no_write_lock(stored) -> None:  # type: ignore[no-untyped-def]
    """The worker steps until a batch is empty: that last, empty step reads and returns (no write
    transaction, so no wait behind ingest's commits); what is due is still fired."""
    from datetime import datetime, timezone

    from middleware.scheduler.runner import Scheduler

    engine, rs = stored
    proc = Processor(engine, lambda: rs)
    assert proc.drain() == 4
    assert _returns_while_the_write_lock_is_held(engine, proc.run_once) == 0
    sched = Scheduler(engine, lambda: rs, clock=lambda: datetime(2030, 3, 1, 9, 30, tzinfo=timezone.utc))
    assert sched.fire_due() == 8  # the 72 h and 24 h reminders of the four visits: all that was due
    # a trigger that becomes due after a drained batch is fired (the read before the write finds it)
    writer = InboxWriter(engine)
    assert writer.write_batch([prepare_hl7(SIU.format(n=9).encode(), channel="mllp", port=None, sources=rs.sources).record])[0].stored
    assert proc.drain() == 1
    assert sched.fire_due() == 2
    assert _returns_while_the_write_lock_is_held(engine, sched.fire_due) == 0
    assert sched.fire_due() == 0


def test_a_long_reader_does_not_hold_writers_back_at_every_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past WAL_RESTART_BYTES the checkpoint waits (briefly) for readers with RESTART, so the WAL starts again
    instead of growing; while a long reader keeps it from finishing, it backs off (PASSIVE meanwhile)."""
    import sqlite3

    from middleware.storage import db as dbmod

    path = tmp_path / "long.db"
    engine = make_engine(f"sqlite:///{path}")
    init_db(engine)
    checkpoints_off_the_write_path(engine)
    monkeypatch.setattr(dbmod, "WAL_RESTART_BYTES", 1)
    monkeypatch.setattr(dbmod, "_RESTART_BACKOFF", {})
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("INSERT INTO t VALUES (1)")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # a snapshot that includes the WAL's frames
    writer.execute("INSERT INTO t VALUES (2)")  # a frame the reader's snapshot does not have
    t0 = time.monotonic()
    busy, _, _ = wal_checkpoint(engine)
    first = time.monotonic() - t0
    assert busy == 1 and first >= dbmod.WAL_RESTART_WAIT_MS / 1000 * 0.8  # RESTART waited for the reader
    t0 = time.monotonic()
    wal_checkpoint(engine)
    assert time.monotonic() - t0 < dbmod.WAL_RESTART_WAIT_MS / 1000 / 2  # backed off: PASSIVE, no wait
    assert dbmod._RESTART_BACKOFF[str(path)][1] == 1.0
    reader.execute("COMMIT")
    monkeypatch.setattr(dbmod, "_RESTART_BACKOFF", {})
    busy, pages, done = wal_checkpoint(engine)
    assert busy == 0 and done == pages  # RESTART finished: the next commit writes the WAL from its start
    writer.close()
    reader.close()
    engine.dispose()
