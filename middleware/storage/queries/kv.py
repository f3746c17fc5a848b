"""The ``kv`` table: small durable state (watermarks, destination pauses) by key."""
from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ..sql import UnitOfWork, param, query
from ._tables import KV


def _insert(dialect: str) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(KV).values(
        key=param("key"), value=param("value"), updated_at=param("updated_at"))


def _put(dialect: str) -> Any:
    stmt = _insert(dialect)
    return stmt.on_conflict_do_update(index_elements=[KV.c.key],
                                      set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at})


query("kv.get", select(KV.c.value).where(KV.c.key == param("key")))
query("kv.put", _put)
query("kv.add", lambda d: _insert(d).on_conflict_do_nothing(index_elements=[KV.c.key]))


def get(u: UnitOfWork, key: str) -> str | None:
    value: str | None = u.scalar("kv.get", key=key)
    return value


def put(u: UnitOfWork, key: str, value: str, at: float) -> None:
    """Set ``key`` (insert or replace)."""
    u.run("kv.put", key=key, value=value, updated_at=at)


def add(u: UnitOfWork, key: str, value: str, at: float) -> bool:
    """Insert ``key`` unless it exists; True when inserted."""
    return u.run("kv.add", key=key, value=value, updated_at=at) > 0


class Entry(NamedTuple):
    key: str
    value: str


query("kv.with_prefix", select(KV.c.key, KV.c.value).where(KV.c.key.startswith(param("prefix"))).order_by(KV.c.key),
      Entry)


def get_json(u: UnitOfWork, key: str) -> dict[str, Any] | None:
    """The JSON object stored under ``key``, or None."""
    value = get(u, key)
    return orjson.loads(value) if value is not None else None


def put_json(u: UnitOfWork, key: str, value: dict[str, Any], at: float) -> None:
    put(u, key, orjson.dumps(value).decode(), at)


def with_prefix_json(u: UnitOfWork, prefix: str) -> dict[str, dict[str, Any]]:
    """Every key starting with ``prefix`` and its JSON object, in key order."""
    return {e.key: orjson.loads(e.value) for e in u.all("kv.with_prefix", prefix=prefix)}
