"""Engine and sessions. SQLite runs in WAL mode with ``synchronous=FULL`` so a commit
is on disk before anything is acknowledged; PostgreSQL is reached through psycopg 3."""
from __future__ import annotations

import os
import time

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from . import tables  # noqa: F401  (registers the tables on the metadata)
from .sql import sqlite_write_lock as sqlite_write_lock  # one lock map, kept in sql.py
from .sql import write_lock as write_lock


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` / ``postgres://`` URLs and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def make_engine(url: str, *, synchronous: str = "FULL") -> Engine:
    """Create the engine (and the SQLite file's directory); apply durability pragmas."""
    url = normalize_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_size"] = 10
        kwargs["max_overflow"] = 10
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA journal_size_limit=67108864")  # a WAL restarted after a burst shrinks back to 64 MB
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.close()

    return engine


def checkpoints_off_the_write_path(engine: Engine) -> bool:
    """SQLite: stop commits from running WAL checkpoints themselves (``wal_autocheckpoint=0`` on every
    connection of ``engine``); the caller then runs :func:`wal_checkpoint` on its own schedule.

    By default the commit that takes the WAL past 1,000 pages copies it into the database and fsyncs
    the file, inside its transaction: an inbox commit that ACKs are waiting for, or a processing
    batch the inbox queues behind (issue 16). Returns False (nothing changed) on PostgreSQL and for
    an in-memory database."""
    if not is_sqlite(engine) or engine.url.database in (None, "", ":memory:"):
        return False  # PostgreSQL, or an in-memory database (no WAL; disposing its pool would lose it)

    @event.listens_for(engine, "connect")
    def _no_autocheckpoint(dbapi_conn: Any, _rec: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    engine.dispose()  # connections opened before this reopen with the setting
    return True


#: a WAL larger than this is checkpointed with RESTART (see :func:`wal_checkpoint`)
WAL_RESTART_BYTES = 32 * 1024 * 1024
#: how long a RESTART waits for readers (writers are held back meanwhile)
WAL_RESTART_WAIT_MS = 100
#: per database file: (monotonic time before which no RESTART is tried, the current back-off in seconds)
_RESTART_BACKOFF: dict[str, tuple[float, float]] = {}


def wal_checkpoint(engine: Engine) -> tuple[int, int, int]:
    """A checkpoint on a connection of its own (SQLite), never taking the process's write lock.
    Returns SQLite's ``(busy, wal pages, pages checkpointed)``.

    PASSIVE by default: it copies what it can of the WAL into the database without waiting for, or
    holding up, readers and writers. But the WAL starts again from its beginning only after a
    checkpoint that caught up with every reader, and with the worker reading all the time a PASSIVE one
    never does: the WAL grew to 1 GB in two minutes of benchmark 1. Once it is over
    :data:`WAL_RESTART_BYTES` a RESTART waits (at most :data:`WAL_RESTART_WAIT_MS`, holding writers back
    meanwhile) for the readers to move to the newest snapshot, so the next commit rewrites the WAL from
    its start, and ``journal_size_limit`` cuts the file back. A RESTART that a long reader (a report, an
    export) keeps from finishing is not tried again for 1 s, then 2, 4 ... up to 60 s, PASSIVE ones
    meanwhile: writers are never held back more than a tenth of a second in a second."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        mode = "PASSIVE"
        db = engine.url.database or ""
        now = time.monotonic()
        not_before, backoff = _RESTART_BACKOFF.get(db, (0.0, 0.0))
        try:
            if db and now >= not_before and os.path.getsize(db + "-wal") > WAL_RESTART_BYTES:
                mode = "RESTART"
        except OSError:
            pass
        if mode == "RESTART":
            cur.execute(f"PRAGMA busy_timeout={WAL_RESTART_WAIT_MS}")
        try:
            row = cur.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            if mode == "RESTART":
                cur.execute("PRAGMA busy_timeout=30000")
        cur.close()
        result = (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)
        if mode == "RESTART":
            if result[0]:  # busy: a reader held an older snapshot for the whole wait
                backoff = min(60.0, max(1.0, 2 * backoff))
                _RESTART_BACKOFF[db] = (time.monotonic() + backoff, backoff)
            else:
                _RESTART_BACKOFF.pop(db, None)
        return result
    finally:
        raw.close()


def init_db(engine: Engine) -> None:
    """Bring ``engine``'s database to the newest schema revision, creating it if empty (tests,
    benchmarks, scratch databases). Commands open databases with ``schema.open_database``."""
    from .schema import upgrade

    upgrade(engine)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def synchronous_setting(engine: Engine) -> str:
    """What a commit waits for, for benchmark and health reports."""
    with engine.connect() as conn:
        if is_sqlite(engine):
            val = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(int(val or 0), str(val))
        return "synchronous_commit=" + str(conn.exec_driver_sql("SHOW synchronous_commit").scalar())


def begin_write(session: Session) -> None:
    """Start a unit of work that reads, then writes, as a write transaction.

    SQLite only (a no-op on PostgreSQL): a deferred transaction that has read and then
    tries to write after another connection committed fails at once with "database is
    locked" (SQLITE_BUSY_SNAPSHOT; the busy timeout does not apply). ``BEGIN IMMEDIATE``
    takes the write lock up front and waits for it under the busy timeout instead.
    """
    bind = session.get_bind()
    if is_sqlite(bind):  # type: ignore[arg-type]
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")
