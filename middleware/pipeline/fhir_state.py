"""Durable FHIR listener state in the ``kv`` table (keys and JSON values).

* ``fhir.hwm.<source>.<Type>``: ``{"at": "<lastUpdated ISO>"}``, the reconciliation high-water mark;
* ``fhir.pending.<source>.<Type>``: ``{"at": <epoch>, "arrival": ...}``, a sweep asked for but not yet done;
* ``fhir.sub.<source>.<subscription id>``: event counter, missing numbers, last notification;
* ``fhir.reconcile.<source>``: last sweep (time, counts, error).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from sqlmodel import Session

from ..storage.queries import ingest as q
from ..storage.sql import UnitOfWork, joined


def hwm_key(source: str, rtype: str) -> str:
    return f"fhir.hwm.{source}.{rtype}"


def pending_key(source: str, rtype: str) -> str:
    return f"fhir.pending.{source}.{rtype}"


def sub_key(source: str, sub_id: str) -> str:
    return f"fhir.sub.{source}.{sub_id}"


def reconcile_key(source: str) -> str:
    return f"fhir.reconcile.{source}"


Db = Session | UnitOfWork


def _unit(db: Db) -> UnitOfWork:
    return db if isinstance(db, UnitOfWork) else joined(db)


def kv_get(db: Db, key: str) -> dict[str, Any] | None:
    value = _unit(db).scalar(q.KV_GET, key=key)
    return orjson.loads(value) if value is not None else None


def kv_set(db: Db, key: str, value: dict[str, Any], now: float) -> None:
    _unit(db).run(q.KV_PUT, key=key, value=orjson.dumps(value).decode(), now=now)


def kv_prefix(db: Db, prefix: str) -> dict[str, dict[str, Any]]:
    return {k: orjson.loads(v) for k, v in _unit(db).all(q.KV_PREFIX, prefix=prefix)}


def clear_pending(db: Db, source: str, rtype: str, started_at: float) -> None:
    """Drop a pending sweep asked for before ``started_at`` (a later request stays)."""
    _unit(db).run(q.KV_DELETE_UNTIL, key=pending_key(source, rtype), until=started_at)


def parse_instant(value: str | None) -> datetime | None:
    """A FHIR instant/dateTime -> aware datetime (``None`` when absent or unparsable)."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def fhir_instant(dt: datetime) -> str:
    """Aware datetime -> ``2025-01-02T03:04:05.678Z`` (what ``_lastUpdated``/``_since`` accept)."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
