"""The ``kv`` table: small durable state (watermarks, destination pauses) by key."""
from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.dialects import postgresql, sqlite

from sqlalchemy import select

from ..sql import UnitOfWork, param, query
from ._tables import KV


def _insert(dialect: str) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(KV).values(
        key=param("key"), value=param("value"), updated_at=param("updated_at"))


def _put(dialect: str) -> Any:
    stmt = _insert(dialect)
    return stmt.on_conflict_do_update(index_elements=[KV.c.key],
                                      set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at})


KV_GET = query("kv.get", select(KV.c.value).where(KV.c.key == param("key")))
KV_PUT = query("kv.put", _put)
KV_ADD = query("kv.add", lambda d: _insert(d).on_conflict_do_nothing(index_elements=[KV.c.key]))
KV_PREFIX = query("kv.prefix", select(KV.c.key, KV.c.value).where(KV.c.key.startswith(param("prefix"), autoescape=False)))
KV_DELETE_UNTIL = query("kv.delete_until", KV.delete().where(KV.c.key == param("key"), KV.c.updated_at <= param("until")))


def get(u: UnitOfWork, key: str) -> str | None:
    value: str | None = u.scalar(KV_GET, key=key)
    return value


def put(u: UnitOfWork, key: str, value: str, at: float) -> None:
    """Set ``key`` (insert or replace)."""
    u.run(KV_PUT, key=key, value=value, updated_at=at)


def add(u: UnitOfWork, key: str, value: str, at: float) -> bool:
    """Insert ``key`` unless it exists; True when inserted."""
    return u.run(KV_ADD, key=key, value=value, updated_at=at) > 0


def get_json(u: UnitOfWork, key: str) -> dict[str, Any] | None:
    """The JSON object stored under ``key``, or None."""
    value = get(u, key)
    return orjson.loads(value) if value is not None else None


def put_json(u: UnitOfWork, key: str, value: dict[str, Any], at: float) -> None:
    put(u, key, orjson.dumps(value).decode(), at)


def with_prefix_json(u: UnitOfWork, prefix: str) -> dict[str, dict[str, Any]]:
    """Every key starting with ``prefix`` and its JSON object, in key order."""
    return {key: orjson.loads(value) for key, value in sorted(u.all(KV_PREFIX, prefix=prefix))}


def delete_until(u: UnitOfWork, key: str, until: float) -> bool:
    """Delete ``key`` if it was last set at or before ``until``; True when deleted."""
    return u.run(KV_DELETE_UNTIL, key=key, until=until) > 0
