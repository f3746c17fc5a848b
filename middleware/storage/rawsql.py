"""DB-API statements inside a Session's transaction, for hot paths.

Building an ORM statement costs 50-150 µs in SQLAlchemy; the query it runs on an indexed
SQLite table costs 5-20 µs. The per-message paths (``pipeline/changes.py``) therefore run
fixed SQL text through the session's own DB-API connection: same transaction, same
savepoints, no statement compilation. SQL is written with ``?`` placeholders and turned
into ``%s`` once per statement for psycopg.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

from sqlmodel import Session


@lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class Raw:
    """A DB-API cursor on ``session``'s connection. Pending ORM changes are flushed first,
    so rows the ORM added are visible to these statements."""

    __slots__ = ("cur", "pg")

    def __init__(self, session: Session) -> None:
        session.flush()
        conn = session.connection()
        self.pg = conn.dialect.name != "sqlite"
        self.cur = conn.connection.cursor()

    def _sql(self, sql: str) -> str:
        return _pyformat(sql) if self.pg else sql

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.cur.execute(self._sql(sql), params)
        return int(self.cur.rowcount or 0)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cur.executemany(self._sql(sql), rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.cur.execute(self._sql(sql), params)
        row = self.cur.fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.cur.execute(self._sql(sql), params)
        return [tuple(r) for r in self.cur.fetchall()]

    def insert_id(self, sql: str, params: Sequence[Any]) -> Any:
        """``INSERT ...`` returning the new row's id (``RETURNING id``: SQLite >= 3.35 and PostgreSQL);
        ``None`` when an ``ON CONFLICT ... DO NOTHING`` inserted nothing."""
        self.cur.execute(self._sql(sql + " RETURNING id"), params)
        row = self.cur.fetchone()
        return int(row[0]) if row is not None else None
