"""Operator API: messages, events, triggers, deliveries, replay, health."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from ..delivery.admin_audit import parse_since
from ..delivery.worker import replay
from ..storage.queries import operator as q
from ..storage.sql import unit
from ..storage.statuses import DeliveryStatus, InboundStatus
from .deps import TokenDep, audited

router = APIRouter(dependencies=[TokenDep])


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


def _engine(request: Request) -> Any:
    return request.app.state.runtime.engine


class MessageOut(BaseModel):
    id: int
    source: str
    channel: str
    received_at: str | None
    message_type: str | None
    control_id: str | None
    status: str
    error: str | None
    processed_at: str | None
    size: int
    meta: Any = None


class MessagesOut(BaseModel):
    """A page, newest first; ``next_before_id`` fetches the older page (null on the last one),
    ``prev_after_id`` the newer one (null on the first)."""

    items: list[MessageOut]
    next_before_id: int | None
    prev_after_id: int | None


def message_filter(*, source: str | None = None, message_type: str | None = None, control_id: str | None = None,
                   status: str | None = None, since: str | None = None, until: str | None = None,
                   errored: bool = False) -> q.MessageFilter:
    """The browser's filter from query parameters (times: ISO 8601 or epoch seconds); 422 on a bad time."""
    try:
        t0 = parse_since(since) if since else None
        t1 = parse_since(until) if until else None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return q.MessageFilter(source=source or None, message_type=message_type or None, control_id=control_id or None,
                           status=status or None, since=t0, until=t1, errored=errored)


def message_page(engine: Any, where: q.MessageFilter, *, limit: int, before_id: int | None = None,
                 after_id: int | None = None) -> tuple[list[q.MessageListed], int | None, int | None]:
    """One page of the message browser (API and console): rows newest first, the ``before_id`` of
    the older page and the ``after_id`` of the newer one (None at either end). One extra row is read
    to know whether an older (or newer) page exists: no count."""
    with unit(engine) as u:
        rows = q.messages(u, limit=limit + 1, before_id=before_id, after_id=after_id, where=where)
        if after_id is not None:
            more_newer = len(rows) > limit
            rows = rows[-limit:] if more_newer else rows
            more_older = True
        else:
            more_older = len(rows) > limit
            rows = rows[:limit]
            more_newer = before_id is not None
    if not rows:
        return [], None, None
    return rows, rows[-1].id if more_older else None, rows[0].id if more_newer else None


@router.get("/api/messages", response_model=MessagesOut)
def messages(request: Request, status: str | None = None, source: str | None = None, message_type: str | None = None,
             control_id: str | None = None, since: str | None = None, until: str | None = None, errored: bool = False,
             limit: int = Query(100, ge=1, le=1000), before_id: int | None = None, after_id: int | None = None) -> MessagesOut:
    where = message_filter(source=source, message_type=message_type, control_id=control_id, status=status, since=since,
                           until=until, errored=errored)
    rows, older, newer = message_page(_engine(request), where, limit=limit, before_id=before_id, after_id=after_id)
    return MessagesOut(items=[
        MessageOut(id=m.id, source=m.source, channel=m.channel, received_at=iso(m.received_at), message_type=m.message_type,
                   control_id=m.control_id, status=m.status, error=m.error, processed_at=iso(m.processed_at),
                   size=int(m.size), meta=orjson.loads(m.meta) if m.meta else None)
        for m in rows], next_before_id=older, prev_after_id=newer)


@router.get("/api/messages/{message_id}/raw")
def message_raw(request: Request, message_id: int) -> dict[str, Any]:
    with unit(_engine(request)) as u:
        m = q.message_raw(u, message_id)
    if m is None:
        raise HTTPException(404, "no such message")
    return {"id": m.id, "raw": bytes(m.raw or b"").decode("latin-1"), "ack": bytes(m.ack or b"").decode("latin-1") or None}


@router.post("/api/messages/{message_id}/replay")
def message_replay(request: Request, message_id: int) -> dict[str, Any]:
    """Process a failed (or any) stored message again through the current rules."""
    with audited(request, "message.replay", "message", message_id):
        if not replay_message(request.app.state.runtime, message_id):
            raise HTTPException(404, "no such message")
    return {"id": message_id, "status": InboundStatus.RECEIVED.value}


def replay_message(runtime: Any, message_id: int) -> bool:
    """Requeue a stored message for processing and wake the processor; False when there is no such
    message (the API's and the console's replay; each caller audits)."""
    with unit(runtime.engine, write=True) as u:
        found = q.requeue_message(u, message_id)
    if found:
        runtime.wake_process.set()
    return found


def event_json(e: q.EventRecord) -> dict[str, Any]:
    return {"id": e.id, "type": e.type, "previous_status": e.previous_status, "status": e.status,
            "resource_type": e.resource_type, "resource_key": e.resource_key, "patient_key": e.patient_key,
            "resource": orjson.loads(e.resource), "source": e.source, "arrival": e.arrival,
            "occurred_at": iso(e.occurred_at), "created_at": iso(e.created_at), "inbound_id": e.inbound_id}


@router.get("/api/events")
def events(request: Request, type: str | None = None, patient_key: str | None = None, arrival: str | None = None,
           limit: int = Query(100, le=1000), before_id: int | None = None) -> dict[str, Any]:
    with unit(_engine(request)) as u:
        rows = q.events(u, limit=limit, before_id=before_id, type=type, patient_key=patient_key, arrival=arrival)
    return {"items": [event_json(e) for e in rows]}


def trigger_json(t: q.TriggerRecord) -> dict[str, Any]:
    return {"id": t.id, "rule_id": t.rule_id, "ruleset_version": t.ruleset_version, "name": t.name, "purpose": t.purpose,
            "destinations": [d for d in t.destinations.split(",") if d], "patient_key": t.patient_key,
            "resource_key": t.resource_key, "event_id": t.event_id, "status": t.status, "reason": t.reason,
            "due_at": iso(t.due_at), "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
            "fired_at": iso(t.fired_at), "payload": orjson.loads(t.payload),
            "explain": orjson.loads(t.explain) if t.explain else [],
            "journey_id": t.journey_id, "journey_step": t.journey_step, "flag": t.flag}


@router.get("/api/triggers")
def triggers(request: Request, status: str | None = None, rule_id: str | None = None, patient_key: str | None = None,
             limit: int = Query(100, le=1000), before_id: int | None = None) -> dict[str, Any]:
    with unit(_engine(request)) as u:
        rows = q.triggers(u, limit=limit, before_id=before_id, status=status, rule_id=rule_id, patient_key=patient_key)
    return {"items": [trigger_json(t) for t in rows]}


@router.get("/api/triggers/{trigger_id}")
def trigger_one(request: Request, trigger_id: int) -> dict[str, Any]:
    with unit(_engine(request)) as u:
        t = q.trigger(u, trigger_id)
    if t is None:
        raise HTTPException(404, "no such trigger")
    return trigger_json(t)


@router.get("/api/deliveries")
def deliveries(request: Request, status: str | None = None, destination: str | None = None,
               limit: int = Query(100, le=1000), before_id: int | None = None) -> dict[str, Any]:
    with unit(_engine(request)) as u:
        rows = q.deliveries(u, limit=limit, before_id=before_id, status=status, destination=destination)
        history: dict[int, list[q.AttemptDetail]] = {}
        for a in q.attempts_of(u, [d.id for d in rows]):
            history.setdefault(a.delivery_id, []).append(a)
    out = []
    for d in rows:
        attempts = history.get(d.id, [])
        out.append({"id": d.id, "trigger_id": d.trigger_id, "destination": d.destination,
                    "idempotency_key": d.idempotency_key, "status": d.status, "attempts": d.attempts,
                    "next_attempt_at": iso(d.next_attempt_at), "last_error": d.last_error,
                    "last_status_code": d.last_status_code, "delivered_at": iso(d.delivered_at),
                    "kind": d.kind, "confirmation": d.confirmation,
                    "history": [{"at": iso(a.at), "outcome": a.outcome, "status_code": a.status_code,
                                 "error": a.error, "duration_ms": round(a.duration_ms, 2)} for a in attempts]})
    return {"items": out}


@router.post("/api/deliveries/replay")
def deliveries_replay(request: Request, delivery_id: int | None = None, destination: str | None = None, status: str = DeliveryStatus.DEAD,
                      rule_id: str | None = None, reason_contains: str | None = None) -> dict[str, Any]:
    """Replay one delivery (``delivery_id``), a filter (status, rule, reason text) or a whole destination."""
    target = ("delivery", delivery_id) if delivery_id is not None else ("destination", destination)
    with audited(request, "deliveries.replay", *target) as a:
        a.detail = {k: v for k, v in {"status": status, "rule_id": rule_id, "destination": destination}.items() if v}
        try:
            n = replay(_engine(request), delivery_id=delivery_id, destination=destination, status=status,
                       rule_id=rule_id, reason_contains=reason_contains)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        a.detail["replayed"] = n
    request.app.state.runtime.wake_deliver.set()
    return {"replayed": n}


@router.post("/api/mappings/reload")
def mappings_reload(request: Request) -> dict[str, Any]:
    with audited(request, "mappings.reload", "ruleset") as a:
        errors = request.app.state.runtime.reload()
        a.target_id = request.app.state.runtime.ruleset().version
        if errors:
            a.detail["errors"] = len(errors)
            raise HTTPException(422, {"errors": [str(e) for e in errors], "running_version": request.app.state.runtime.ruleset().version})
    return {"version": request.app.state.runtime.ruleset().version}
