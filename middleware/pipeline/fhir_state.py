"""Durable FHIR listener state in the ``kv`` table (keys and JSON values).

* ``fhir.hwm.<source>.<Type>``: ``{"at": "<lastUpdated ISO>"}``, the reconciliation high-water mark;
* ``fhir.pending.<source>.<Type>``: ``{"at": <epoch>, "arrival": ...}``, a sweep asked for but not yet done;
* ``fhir.sub.<source>.<subscription id>``: event counter, missing numbers, last notification;
* ``fhir.reconcile.<source>``: last sweep (time, counts, error).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..storage.queries import kv
from ..storage.sql import UnitOfWork


def hwm_key(source: str, rtype: str) -> str:
    return f"fhir.hwm.{source}.{rtype}"


def pending_key(source: str, rtype: str) -> str:
    return f"fhir.pending.{source}.{rtype}"


def sub_key(source: str, sub_id: str) -> str:
    return f"fhir.sub.{source}.{sub_id}"


def reconcile_key(source: str) -> str:
    return f"fhir.reconcile.{source}"


def kv_get(u: UnitOfWork, key: str) -> dict[str, Any] | None:
    return kv.get_json(u, key)


def kv_set(u: UnitOfWork, key: str, value: dict[str, Any], now: float) -> None:
    kv.put_json(u, key, value, now)


def kv_prefix(u: UnitOfWork, prefix: str) -> dict[str, dict[str, Any]]:
    return kv.with_prefix_json(u, prefix)


def clear_pending(u: UnitOfWork, source: str, rtype: str, started_at: float) -> None:
    """Drop a pending sweep asked for before ``started_at`` (a later request stays)."""
    kv.delete_until(u, pending_key(source, rtype), started_at)


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
