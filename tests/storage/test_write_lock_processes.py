"""Issue 16: SQLite's one writer handed between processes (``serve`` and its worker process).

Each process's :class:`~middleware.storage.sql.WriteLock` also takes the database's
:class:`~middleware.storage.sql.FileLock` (``flock`` on ``<db>-wlock``): a writer of another
process waits in the kernel and gets the lock the moment it is let go (not after SQLite's busy
handler's sleeps), and a holder sees that another process's ingest (an urgent writer) waits.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from middleware.storage import sql
from middleware.storage.db import init_db, make_engine

pytestmark = pytest.mark.sqlite_only  # the lock file is SQLite's; PostgreSQL has row locks

REPO = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent("""
    import sys, time
    from middleware.storage import sql
    from middleware.storage.db import make_engine
    from middleware.storage.sql import unit

    engine = make_engine(sys.argv[1])
    mode = sys.argv[2]
    with unit(engine, write=True) as u:
        print("held", flush=True)
        if mode == "hold":
            time.sleep(0.5)
        else:  # "yield": work in small steps until another process's ingest waits
            deadline = time.monotonic() + 5
            while not u.should_yield() and time.monotonic() < deadline:
                time.sleep(0.001)
            print("saw-urgent" if u.should_yield() else "never-saw-urgent", flush=True)
        released = time.monotonic()
    print(f"released {released!r}", flush=True)
""")


def _holder(url: str, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, mode], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def url(tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path}/c.db"
    init_db(make_engine(u))
    return u


def test_a_writer_of_another_process_waits_for_the_holder_and_gets_the_lock_as_it_is_let_go(url: str) -> None:
    lock = sql.sqlite_write_lock(make_engine(url))
    assert lock is not None and lock.file is not None
    holder = _holder(url, "hold")
    asked = time.monotonic()
    lock.acquire(urgent=True)
    got = time.monotonic()
    lock.release()
    out, _ = holder.communicate(timeout=10)
    released = float(out.split("released ")[1])
    assert got - asked > 0.3, "the other process held the lock: this one must have waited"
    assert got - released < 0.05, f"handed over {1000 * (got - released):.1f} ms after the release (no busy-wait sleeps)"


def test_the_holder_sees_that_another_process_s_ingest_waits_and_lets_it_in(url: str) -> None:
    lock = sql.sqlite_write_lock(make_engine(url))
    assert lock is not None and not lock.urgent_waiting
    holder = _holder(url, "yield")
    t0 = time.monotonic()
    lock.acquire(urgent=True)  # the inbox writer's way of asking
    waited = time.monotonic() - t0
    lock.release()
    out, _ = holder.communicate(timeout=10)
    assert "saw-urgent" in out, out
    assert waited < 1.0, "the holder committed early for this process's urgent writer"
    assert not lock.urgent_waiting  # nobody waits any more: the shared word is cleared


def test_an_ordinary_writer_is_not_taken_for_an_urgent_one(url: str) -> None:
    lock = sql.sqlite_write_lock(make_engine(url))
    assert lock is not None
    holder = _holder(url, "yield")
    lock.acquire()  # ordinary (processing, scheduler, delivery): the holder is not asked to yield
    lock.release()
    out, _ = holder.communicate(timeout=15)
    assert "never-saw-urgent" in out, out
