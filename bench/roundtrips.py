"""Count what a piece of work asks of the database: statements, and on PostgreSQL round trips.

PostgreSQL: every connection of the engine is traced with libpq's protocol trace
(``PQtrace``, through psycopg's ``pgconn.trace``), one file per connection. A round trip is a
point where the client has sent something and then reads the server's answer: in the trace, a
backend (``B``) message that follows a frontend (``F``) message. Statements are the frontend
``Query`` and ``Parse``/``Bind`` messages (an ``executemany`` batch or a pipeline sends many
statements in one round trip). SQLite has no round trips; its statements are counted with
``sqlite3``'s trace callback.

Tracing costs CPU: count in a run of its own, not in a timed one.
"""
from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


@dataclass
class Counts:
    round_trips: int = 0
    statements: int = 0


class Counter:
    """Attach to ``engine`` before its connections are made (or while they are idle)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self._lock = threading.Lock()
        self._files: dict[int, tuple[Any, Any]] = {}  # id(dbapi conn) -> (conn, open trace file)
        self._sqlite = 0
        self._dir = tempfile.mkdtemp(prefix="careloop-trace-")
        event.listen(engine, "checkout", self._on_checkout)

    def _on_checkout(self, dbapi_conn: Any, _rec: Any, _proxy: Any) -> None:
        with self._lock:
            if id(dbapi_conn) in self._files:
                return
            if self.pg:
                self._trace_pg(dbapi_conn)
            else:
                dbapi_conn.set_trace_callback(self._count_sqlite)
                self._files[id(dbapi_conn)] = (dbapi_conn, None)

    def _trace_pg(self, dbapi_conn: Any) -> None:
        from psycopg import pq

        f = open(os.path.join(self._dir, f"{id(dbapi_conn)}-{len(self._files)}.trace"), "w")
        dbapi_conn.pgconn.trace(f.fileno())
        dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        self._files[id(dbapi_conn)] = (dbapi_conn, f)

    def _count_sqlite(self, _sql: str) -> None:
        self._sqlite += 1

    def take(self) -> Counts:
        """What was asked since the last ``take`` (connections must be idle)."""
        with self._lock:
            if not self.pg:
                n, self._sqlite = self._sqlite, 0
                return Counts(0, n)
            out = Counts()
            files = list(self._files.values())
            self._files.clear()
            for conn, f in files:
                try:
                    conn.pgconn.untrace()
                except Exception:
                    pass
                f.close()
                with open(f.name) as fh:
                    last = ""
                    for line in fh:
                        side, _, rest = line.partition("\t")
                        kind = rest.split("\t", 2)[1].split(" ", 1)[0] if "\t" in rest else ""
                        if side == "B" and last == "F":
                            out.round_trips += 1
                        if side == "F" and kind in ("Query", "Bind"):
                            out.statements += 1
                        last = side
                os.unlink(f.name)
                if not conn.closed:
                    self._trace_pg(conn)
            return out
