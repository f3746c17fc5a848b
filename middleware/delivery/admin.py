"""Operator actions on deliveries, shared by the CLI, the API and the console: list, replay, pause,
resume, alerts.

``replay`` puts matching deliveries back to ``pending`` with a fresh attempt budget
(dead letters by default; ``unconfirmed`` or ``suppressed`` on request). Replaying an
``unconfirmed`` delivery clears its send intent, so it is really re-sent. Replaying a
whole destination also lifts its 410/auth pause and resolves its alerts.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from ..storage.queries import admin as q, kv
from ..storage.queries.delivery import PAUSED
from ..storage.sql import unit
from ..storage.statuses import DeliveryStatus

REPLAYABLE = (DeliveryStatus.DEAD, DeliveryStatus.UNCONFIRMED, DeliveryStatus.SUPPRESSED)
PAUSE_PREFIXES = ("destination.disabled.", "destination.paused.")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


def list_deliveries(engine: Engine, *, status: str | None = None, destination: str | None = None,
                    limit: int = 100, with_history: bool = False) -> list[dict[str, Any]]:
    """Newest first; ids, statuses and reasons only (no payloads)."""
    with unit(engine) as u:
        rows = q.list_deliveries(u, status=status or None, destination=destination or None, limit=limit)
        history: dict[int, list[dict[str, Any]]] = {}
        if with_history:
            for a in q.attempts_of(u, [d.id for d in rows]):
                history.setdefault(a.delivery_id, []).append(
                    {"at": _iso(a.at), "outcome": a.outcome, "status_code": a.status_code, "error": a.error})
    out = []
    for d in rows:
        item: dict[str, Any] = {
            "id": d.id, "trigger_id": d.trigger_id, "rule_id": d.rule_id, "destination": d.destination,
            "status": d.status, "attempts": d.attempts, "next_attempt_at": _iso(d.next_attempt_at),
            "last_error": d.last_error, "last_status_code": d.last_status_code, "delivered_at": _iso(d.delivered_at),
            "kind": d.kind, "confirmation": d.confirmation,
        }
        if with_history:
            item["history"] = history.get(d.id, [])
        out.append(item)
    return out


def _listed_json(d: q.DeliveryListed) -> dict[str, Any]:
    return {"id": d.id, "trigger_id": d.trigger_id, "rule_id": d.rule_id, "destination": d.destination,
            "status": d.status, "attempts": d.attempts, "next_attempt_at": _iso(d.next_attempt_at),
            "last_error": d.last_error, "last_status_code": d.last_status_code, "delivered_at": _iso(d.delivered_at),
            "kind": d.kind, "confirmation": d.confirmation}


def _attempt_json(a: Any) -> dict[str, Any]:
    return {"at": _iso(a.at), "outcome": a.outcome, "status_code": a.status_code, "error": a.error,
            "duration_ms": round(a.duration_ms, 2)}


def problem_deliveries(engine: Engine, *, status: str | None = None, destination: str | None = None,
                       rule_id: str | None = None, before_id: int | None = None,
                       limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
    """Dead letters, unconfirmed and failing deliveries (or those of ``status``) with their attempts,
    newest first: (one page, ``before_id`` of the next page or None). No payloads."""
    limit = max(1, min(limit, 500))
    with unit(engine) as u:
        rows = q.problem_deliveries(u, status=status or None, destination=destination or None, rule_id=rule_id or None,
                                    before_id=before_id, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        history: dict[int, list[dict[str, Any]]] = {}
        for a in q.attempts_of(u, [d.id for d in rows]):
            history.setdefault(a.delivery_id, []).append(_attempt_json(a))
    items = [{**_listed_json(d), "history": history.get(d.id, [])} for d in rows]
    return items, (rows[-1].id if more and rows else None)


def delivery(engine: Engine, delivery_id: int) -> dict[str, Any] | None:
    """One delivery with its attempts (oldest first), or None."""
    with unit(engine) as u:
        d = q.delivery(u, delivery_id)
        if d is None:
            return None
        attempts = [_attempt_json(a) for a in q.attempts_of(u, [delivery_id])]
    return {**_listed_json(d), "history": attempts}


def replay_count(engine: Engine, *, delivery_id: int | None = None, destination: str | None = None,
                 status: str = DeliveryStatus.DEAD, rule_id: str | None = None, reason_contains: str | None = None) -> int:
    """How many deliveries :func:`replay` with these arguments would put back (for a confirm step)."""
    if status not in REPLAYABLE:
        raise ValueError(f"status must be one of {', '.join(REPLAYABLE)}")
    with unit(engine) as u:
        return q.replay_count(u, status=status, delivery_id=delivery_id, destination=destination or None,
                              rule_id=rule_id or None, reason_contains=reason_contains or None)


def replay(engine: Engine, *, delivery_id: int | None = None, destination: str | None = None, status: str = DeliveryStatus.DEAD,
           rule_id: str | None = None, reason_contains: str | None = None, now: float | None = None) -> int:
    """Put matching deliveries back to pending; return how many. Raises ValueError for a non-replayable status."""
    if status not in REPLAYABLE:
        raise ValueError(f"status must be one of {', '.join(REPLAYABLE)}")
    now = time.time() if now is None else now
    with unit(engine, write=True) as u:
        n = q.replay(u, status=status, delivery_id=delivery_id, destination=destination or None, rule_id=rule_id or None,
                     reason_contains=reason_contains or None, now=now)
        if destination and delivery_id is None:
            q.lift(u, destination, PAUSE_PREFIXES, now)
    return n


def resume(engine: Engine, destination: str, now: float | None = None) -> bool:
    """Lift a destination's pause (auth failure or 410) and resolve its alerts; True if it was paused."""
    with unit(engine, write=True) as u:
        return q.lift(u, destination, PAUSE_PREFIXES, time.time() if now is None else now)


def pause(engine: Engine, destination: str, *, by: str, reason: str | None = None, now: float | None = None) -> bool:
    """Pause a destination by hand (the worker sends nothing to it until :func:`resume`); True if
    it was not paused already. Stored like an auth-failure pause (``destination.paused.<name>``),
    marked ``manual`` so its state reads "paused" rather than "auth failure"; no alert is raised."""
    now = time.time() if now is None else now
    value = orjson.dumps({"reason": (reason or "paused by an operator")[:200], "since": now, "manual": True, "by": by[:100]})
    with unit(engine, write=True) as u:
        return kv.add(u, PAUSED + destination, value.decode(), now)


def paused_destinations(engine: Engine) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with unit(engine) as u:
        for prefix in PAUSE_PREFIXES:
            for key, value in kv.with_prefix_json(u, prefix).items():
                out[key[len(prefix):]] = {"kind": "disabled" if "disabled" in prefix else "paused", **value}
    return out


def alerts(engine: Engine, *, open_only: bool = True) -> list[dict[str, Any]]:
    with unit(engine) as u:
        rows = q.alerts(u, open_only=open_only)
    return [{"id": a.id, "kind": a.kind, "destination": a.destination, "delivery_id": a.delivery_id,
             "message": a.message, "created_at": _iso(a.created_at), "resolved_at": _iso(a.resolved_at)}
            for a in rows]
