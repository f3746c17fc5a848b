"""Read rows back from the database under test (SQLite or PostgreSQL) for assertions."""
from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine


def fetch(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    """``sql`` (no parameters) on a new connection of ``engine``; rows as plain tuples (BLOB/bytea as bytes)."""
    with engine.connect() as conn:
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in conn.exec_driver_sql(sql).fetchall()]


def rows_at(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """``sql`` (named ``:params``) on the database at ``url`` through a short-lived engine (another
    process owns the database: a ``careloop serve`` subprocess)."""
    from sqlalchemy import text

    from middleware.storage.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()
