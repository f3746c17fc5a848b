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
from sqlalchemy import delete
from sqlmodel import Session, col, select

from ..storage.tables import KeyValue


def hwm_key(source: str, rtype: str) -> str:
    return f"fhir.hwm.{source}.{rtype}"


def pending_key(source: str, rtype: str) -> str:
    return f"fhir.pending.{source}.{rtype}"


def sub_key(source: str, sub_id: str) -> str:
    return f"fhir.sub.{source}.{sub_id}"


def reconcile_key(source: str) -> str:
    return f"fhir.reconcile.{source}"


def kv_get(session: Session, key: str) -> dict[str, Any] | None:
    row = session.get(KeyValue, key)
    return orjson.loads(row.value) if row is not None else None


def kv_set(session: Session, key: str, value: dict[str, Any], now: float) -> None:
    row = session.get(KeyValue, key)
    if row is None:
        session.add(KeyValue(key=key, value=orjson.dumps(value).decode(), updated_at=now))
    else:
        row.value = orjson.dumps(value).decode()
        row.updated_at = now
        session.add(row)


def kv_prefix(session: Session, prefix: str) -> dict[str, dict[str, Any]]:
    rows = session.exec(select(KeyValue).where(col(KeyValue.key).startswith(prefix)))
    return {r.key: orjson.loads(r.value) for r in rows}


def clear_pending(session: Session, source: str, rtype: str, started_at: float) -> None:
    """Drop a pending sweep asked for before ``started_at`` (a later request stays)."""
    row = session.get(KeyValue, pending_key(source, rtype))
    if row is not None and row.updated_at <= started_at:
        session.exec(delete(KeyValue).where(col(KeyValue.key) == row.key, col(KeyValue.updated_at) <= started_at))


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
