"""The ingest spool (SQLite only): a database file of its own where the inbox writer commits.

SQLite has one writer per database file, across processes. With the worker running, the main
database's writer is held by processing, scheduling and delivery transactions most of the time,
and an ACK that has to wait for one of them waits milliseconds (issue 16: ACK p50 4 ms on one
connection, of which 1.2 ms queued for the writer). The spool, ``<database>-ingest``, is written
by the inbox writer's commit thread alone, so an ACK waits only for its own commit and fsync:

* the commit thread inserts each batch into ``spool`` (``synchronous`` as the main database:
  FULL by default) and then answers the producers: the message is durable before its ACK;
* the mover (a thread beside it) copies what is committed there into ``inbound_message`` in
  order, in one main-database transaction per pass that also advances this spool's cursor in
  ``kv`` (``inbox.spool.<spool id>``): a row is moved exactly once, a crash anywhere included;
* only the commit thread deletes moved rows (with its next batch, in the same transaction), so a
  row is in the spool until after it is in ``inbound_message``: the duplicate check, which reads
  the main table first and then the spool, never misses one in flight.

A new spool file (deleted by hand, say) gets a new id, so an old cursor never skips its rows.
The table's columns are the inbox INSERT's parameters; a spool left by a release whose columns
differ is drained (the columns both know; the others take their defaults) and made again at start.
The file holds no schema the main database's migrations manage: it is emptied as fast as rows come.
"""
from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger("careloop.spool")

__all__ = ["Spool", "spool_path"]

#: rows moved per main-database transaction
MOVE_BATCH = 2000


def spool_path(database: Path) -> Path:
    """The spool file beside the SQLite database ``database``."""
    return database.with_name(database.name + "-ingest")


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a column name: {name!r}")
    return f'"{name}"'


class Spool:
    """The spool file's schema and statements. Each thread uses a :meth:`connect` of its own."""

    def __init__(self, path: Path, columns: Sequence[str], *, synchronous: str = "FULL") -> None:
        self.path = path
        self.columns = tuple(columns)
        self.synchronous = synchronous
        cols = ", ".join(_ident(c) for c in self.columns)
        self.insert_sql = f"INSERT INTO spool ({cols}) VALUES ({', '.join('?' for _ in self.columns)})"
        self.delete_sql = "DELETE FROM spool WHERE seq <= ?"
        # duplicates of keys (a JSON list: one parameter whatever their number), as INBOX_SEEN on the main table
        self.seen_sql = ("SELECT dedup_key, sha256, ack FROM spool WHERE dedup_key IN (SELECT value FROM json_each(?))"
                         " AND status != ?")
        self.id = ""
        self._reading(self.columns)

    def _reading(self, have: Sequence[str]) -> None:
        """The table holds columns ``have`` (an older release's, until it is drained and made again):
        :meth:`pending` selects this release's columns, ``NULL`` for those it lacks."""
        self._read_cols = tuple(have)
        cols = ", ".join(_ident(c) if c in self._read_cols else "NULL" for c in self.columns)
        self._pending_sql = f"SELECT seq, {cols} FROM spool WHERE seq > ? ORDER BY seq LIMIT ?"

    def connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={self.synchronous}")
        con.execute("PRAGMA wal_autocheckpoint=0")  # the writer checkpoints after answering (checkpoint_every)
        con.execute("PRAGMA journal_size_limit=4194304")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def open(self) -> None:
        """Create the file and its tables (or read an existing one's id and columns)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self.connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE IF NOT EXISTS spool_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
            con.execute("INSERT OR IGNORE INTO spool_meta (k, v) VALUES ('id', ?)", (uuid.uuid4().hex,))
            self.id = str(con.execute("SELECT v FROM spool_meta WHERE k = 'id'").fetchone()[0])
            have = [r[1] for r in con.execute("PRAGMA table_info(spool)")]
            if not have:
                self._create(con)
            else:
                self._reading([c for c in have if c != "seq"])
            con.execute("COMMIT")
        finally:
            con.close()

    def _create(self, con: sqlite3.Connection) -> None:
        cols = ", ".join(_ident(c) for c in self.columns)
        con.execute(f"CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, {cols})")
        con.execute("CREATE INDEX spool_dedup ON spool (dedup_key)")
        self._reading(self.columns)

    @property
    def current(self) -> bool:
        """The table has this release's columns (else it is drained and made again before use)."""
        return self._read_cols == self.columns

    def remake(self, moved: int) -> None:
        """Make an older release's table again with this release's columns, once every row is moved
        (durably) into the inbox: ``seq`` up to ``moved``."""
        con = self.connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute(self.delete_sql, (moved,))
            left = con.execute("SELECT count(*) FROM spool").fetchone()[0]
            if left:
                raise RuntimeError(f"the ingest spool still holds {left} rows")
            con.execute("DROP TABLE spool")
            self._create(con)
            # its seq starts again at 1: a new id, so a new cursor
            self.id = uuid.uuid4().hex
            con.execute("UPDATE spool_meta SET v = ? WHERE k = 'id'", (self.id,))
            con.execute("COMMIT")
        finally:
            con.close()

    @property
    def cursor_key(self) -> str:
        """The ``kv`` key of this spool's cursor (the last ``seq`` moved)."""
        return f"inbox.spool.{self.id}"

    def pending(self, con: sqlite3.Connection, after: int, limit: int = MOVE_BATCH) -> list[tuple[Any, ...]]:
        """Rows committed after ``seq`` ``after``, in order: ``(seq, values...)`` in :attr:`columns` order
        (a column an older spool lacks is ``None``, for the INSERT's default)."""
        return con.execute(self._pending_sql, (after, limit)).fetchall()


def checkpoint_every(con: Callable[[], sqlite3.Connection | None], every_s: float) -> Callable[[], None]:
    """A call that checkpoints the spool's WAL on ``con()`` (its writer's connection) at most every
    ``every_s`` seconds, with ``RESTART``: the next commit writes the WAL from its start again.

    A WAL that only grows makes every commit's ``fdatasync`` a journal commit of the file system (the
    file's size changes), and on ext4 that commit also writes out the main database's new WAL blocks:
    the ACK then waits for the worker's writes. Rewriting the same blocks needs no journal commit.
    The spool is a few pages, so the checkpoint is short; its only reader (the mover) reads briefly."""
    last = [time.monotonic()]

    def maybe() -> None:
        now = time.monotonic()
        c = con()
        if c is None or now - last[0] < every_s:
            return
        last[0] = now
        try:
            c.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.Error as exc:
            log.warning("ingest spool checkpoint failed: %s", type(exc).__name__)
    return maybe
