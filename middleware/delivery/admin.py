"""Operator actions on deliveries, shared by the CLI and the API: list, replay, resume, alerts.

``replay`` puts matching deliveries back to ``pending`` with a fresh attempt budget
(dead letters by default; ``unconfirmed`` or ``suppressed`` on request). Replaying an
``unconfirmed`` delivery clears its send intent, so it is really re-sent. Replaying a
whole destination also lifts its 410/auth pause and resolves its alerts.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from ..storage.tables import DeliveryAlert, DeliveryAttempt, DeliveryRow, KeyValue, SendIntent, TriggerRow

REPLAYABLE = ("dead", "unconfirmed", "suppressed")
PAUSE_PREFIXES = ("destination.disabled.", "destination.paused.")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


def list_deliveries(engine: Engine, *, status: str | None = None, destination: str | None = None,
                    limit: int = 100, with_history: bool = False) -> list[dict[str, Any]]:
    """Newest first; ids, statuses and reasons only (no payloads)."""
    with Session(engine) as s:
        stmt = select(DeliveryRow, TriggerRow.rule_id).join(TriggerRow, col(TriggerRow.id) == DeliveryRow.trigger_id, isouter=True)
        if status:
            stmt = stmt.where(DeliveryRow.status == status)
        if destination:
            stmt = stmt.where(DeliveryRow.destination == destination)
        rows = s.exec(stmt.order_by(col(DeliveryRow.id).desc()).limit(limit)).all()
        out = []
        for d, rule_id in rows:
            item: dict[str, Any] = {
                "id": d.id, "trigger_id": d.trigger_id, "rule_id": rule_id, "destination": d.destination,
                "status": d.status, "attempts": d.attempts, "next_attempt_at": _iso(d.next_attempt_at),
                "last_error": d.last_error, "last_status_code": d.last_status_code, "delivered_at": _iso(d.delivered_at),
            }
            if with_history:
                atts = s.exec(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == d.id).order_by(col(DeliveryAttempt.id))).all()
                item["history"] = [{"at": _iso(a.at), "outcome": a.outcome, "status_code": a.status_code, "error": a.error}
                                   for a in atts]
            out.append(item)
        return out


def replay(engine: Engine, *, delivery_id: int | None = None, destination: str | None = None, status: str = "dead",
           rule_id: str | None = None, reason_contains: str | None = None, now: float | None = None) -> int:
    """Put matching deliveries back to pending; return how many. Raises ValueError for a non-replayable status."""
    if status not in REPLAYABLE:
        raise ValueError(f"status must be one of {', '.join(REPLAYABLE)}")
    now = time.time() if now is None else now
    with Session(engine) as s:
        stmt = select(DeliveryRow).where(DeliveryRow.status == status)
        if delivery_id is not None:
            stmt = stmt.where(DeliveryRow.id == delivery_id)
        if destination:
            stmt = stmt.where(DeliveryRow.destination == destination)
        if rule_id:
            stmt = stmt.join(TriggerRow, col(TriggerRow.id) == DeliveryRow.trigger_id).where(TriggerRow.rule_id == rule_id)
        if reason_contains:
            stmt = stmt.where(col(DeliveryRow.last_error).contains(reason_contains))
        rows = list(s.exec(stmt))
        for d in rows:
            d.status, d.next_attempt_at, d.attempts, d.updated_at, d.locked_until = "pending", now, 0, now, None
            s.add(d)
            intent = s.get(SendIntent, d.idempotency_key)
            if intent is not None:
                s.delete(intent)
        if destination and delivery_id is None:
            _lift(s, destination, now)
        s.commit()
        return len(rows)


def _lift(s: Session, destination: str, now: float) -> bool:
    lifted = False
    for prefix in PAUSE_PREFIXES:
        kv = s.get(KeyValue, prefix + destination)
        if kv is not None:
            s.delete(kv)
            lifted = True
    for a in s.exec(select(DeliveryAlert).where(DeliveryAlert.destination == destination, col(DeliveryAlert.resolved_at).is_(None))):
        a.resolved_at = now
        s.add(a)
    if lifted:  # what waited behind the pause is due now, not after its backoff
        for d in s.exec(select(DeliveryRow).where(DeliveryRow.destination == destination, DeliveryRow.status == "pending")):
            d.next_attempt_at = min(d.next_attempt_at, now)
            s.add(d)
    return lifted


def resume(engine: Engine, destination: str, now: float | None = None) -> bool:
    """Lift a destination's pause (auth failure or 410) and resolve its alerts; True if it was paused."""
    with Session(engine) as s:
        lifted = _lift(s, destination, time.time() if now is None else now)
        s.commit()
        return lifted


def paused_destinations(engine: Engine) -> dict[str, dict[str, Any]]:
    import orjson

    with Session(engine) as s:
        out: dict[str, dict[str, Any]] = {}
        for prefix in PAUSE_PREFIXES:
            for kv in s.exec(select(KeyValue).where(col(KeyValue.key).startswith(prefix))):
                out[kv.key[len(prefix):]] = {"kind": "disabled" if "disabled" in prefix else "paused", **orjson.loads(kv.value)}
        return out


def alerts(engine: Engine, *, open_only: bool = True) -> list[dict[str, Any]]:
    with Session(engine) as s:
        stmt = select(DeliveryAlert).order_by(col(DeliveryAlert.id).desc())
        if open_only:
            stmt = stmt.where(col(DeliveryAlert.resolved_at).is_(None))
        return [{"id": a.id, "kind": a.kind, "destination": a.destination, "delivery_id": a.delivery_id,
                 "message": a.message, "created_at": _iso(a.created_at), "resolved_at": _iso(a.resolved_at)}
                for a in s.exec(stmt)]
