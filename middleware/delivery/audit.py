"""The disclosure audit: append-only, queryable per patient, exportable (JSON or CSV).

Every delivery that left (or may have left: ``unconfirmed``) has one ``Disclosure``
row: recipient, the dotted list of fields in its part of the request body, the SHA-256
and length of the exact request bytes, purpose, rule and rule-set version, time.
Retention never touches this table; rows must be kept at least :data:`KEEP_YEARS`.
:func:`guard_append_only` makes ORM updates and deletes of a disclosure raise; the database
itself refuses them too, from any client (triggers: ``storage/append_only.py``).
"""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from ..storage.append_only import AppendOnlyError, guard_append_only
from ..storage.queries import audit as q
from ..storage.sql import unit
from ..storage.statuses import DisclosureOutcome
from ..storage.tables import Disclosure

KEEP_YEARS = 6
__all__ = ["AppendOnlyError", "KEEP_YEARS", "disclosure_json", "disclosures_for", "disclosures_of_delivery", "guard_append_only", "to_csv"]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def disclosure_json(d: q.DisclosureRecord | Disclosure) -> dict[str, Any]:
    return {
        "id": d.id, "sent_at": _iso(d.sent_at), "patient_key": d.patient_key, "destination": d.destination,
        "fields": orjson.loads(d.fields), "body_sha256": d.body_sha256, "body_bytes": d.body_bytes,
        "request": d.request_target, "purpose": d.purpose, "rule_id": d.rule_id, "ruleset_version": d.ruleset_version,
        "delivery_id": d.delivery_id, "trigger_id": d.trigger_id, "attempt": d.attempt, "outcome": d.outcome or DisclosureOutcome.DELIVERED,
    }


def disclosures_for(engine: Engine, patient_key: str, *, since: float | None = None, until: float | None = None,
                    destination: str | None = None) -> list[dict[str, Any]]:
    """Every disclosure about ``patient_key``, oldest first."""
    with unit(engine) as u:
        rows = q.disclosures_for(u, patient_key, since=since, until=until, destination=destination or None)
    return [disclosure_json(d) for d in rows]


def disclosures_of_delivery(engine: Engine, delivery_id: int) -> list[dict[str, Any]]:
    """The disclosure rows of one delivery, oldest first."""
    with unit(engine) as u:
        rows = q.of_delivery(u, delivery_id)
    return [disclosure_json(d) for d in rows]


CSV_COLUMNS = ["id", "sent_at", "patient_key", "destination", "purpose", "rule_id", "ruleset_version", "outcome",
               "fields", "body_sha256", "body_bytes", "request", "delivery_id", "trigger_id", "attempt"]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV export; ``fields`` joined with ``;``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "fields": ";".join(r["fields"])})
    return buf.getvalue()
