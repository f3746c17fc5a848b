"""``GET /api/overview``: what the console's overview shows, one source of truth for both.

Ingest per source and delivery attempts by outcome come from the per-minute rollups
(``storage/queries/rollups.py``, filled each minute by the service); the backlog is counted up to
1,000 only (an index range; ``/metrics`` has the exact figure) with its oldest message's age; triggers and deliveries are the
figures ``/metrics`` reads; destination states join the pauses stored in the
database, this process's circuit breakers and the open alerts; the reconciler's last sweep per
FHIR source is its watermark record. Counts and names only: nothing here identifies a patient.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from ..delivery import admin
from ..storage.queries import kv, rollups
from ..storage.sql import unit
from ..storage.statuses import DeliveryStatus
from .deps import TokenDep

router = APIRouter(dependencies=[TokenDep])

DestinationState = Literal["healthy", "paused", "circuit open", "circuit half-open", "auth failure", "disabled"]


class Series(BaseModel):
    """One rollup key (a source, an attempt outcome) over the last hour (60 one-minute points,
    oldest first) and the last day (24 one-hour points)."""

    key: str
    hour: list[int]
    day: list[int]
    last_hour: int
    last_day: int


class DestinationOut(BaseModel):
    name: str
    state: DestinationState
    detail: str | None = None
    since: float | None = None
    dead: int = 0


class ReconcileOut(BaseModel):
    source: str
    at: float | None
    reason: str | None
    resources: int
    deletes: int
    stored: int
    errors: list[str]


class OverviewOut(BaseModel):
    at: float
    ingest: list[Series]
    attempts: list[Series]
    backlog: int
    backlog_capped: bool  # True: at least ``backlog`` (the count stops there)
    lag_s: float
    triggers_pending: int
    triggers_due: int
    scheduler_lag_s: float
    deliveries: dict[str, int]
    dead_letters: int
    destinations: list[DestinationOut]
    reconciler: list[ReconcileOut]


def _series(engine: Any, name: str, now: float) -> list[Series]:
    """Per key: 60 minute points ending with the last complete minute, 24 hour points ending now."""
    this_minute = int(now // 60)
    start_day = this_minute - 24 * 60 + 1
    hour: dict[str, list[int]] = defaultdict(lambda: [0] * 60)
    day: dict[str, list[int]] = defaultdict(lambda: [0] * 24)
    for r in rollups.per_minute(engine, name, start_day):
        back = this_minute - r.minute
        if back < 0:
            continue
        if back < 60:
            hour[r.key][59 - back] += r.n
        day[r.key][(r.minute - start_day) // 60] += r.n
    return [Series(key=k, hour=hour[k], day=day[k], last_hour=sum(hour[k]), last_day=sum(day[k])) for k in sorted(day)]


def _destinations(runtime: Any, dead: dict[str, int]) -> list[DestinationOut]:
    engine = runtime.engine
    paused = admin.paused_destinations(engine)
    alerts: dict[str, dict[str, Any]] = {}
    for a in admin.alerts(engine):
        alerts.setdefault(a["destination"], a)
    breakers = runtime.breaker_states()
    names = sorted(set(runtime.ruleset().destinations) | set(breakers) | set(paused) | set(dead))
    out = []
    for name in names:
        p, br, al = paused.get(name), breakers.get(name), alerts.get(name)
        state: DestinationState = "healthy"
        detail = since = None
        if p is not None:
            reason = str(p.get("reason") or "")
            state = "auth failure" if "credential" in reason or (al and al["kind"] == "auth-failure") else (
                "disabled" if p.get("kind") == "disabled" else "paused")
            detail, since = reason or None, p.get("since")
        elif br is not None:
            st = br["state"]
            state = "auth failure" if st == "open-auth" else "circuit open" if st == "open" else "circuit half-open"
            detail = br["auth_blocked"] or f"{br['failures']} consecutive failures"
        elif al is not None:
            detail = al["message"]
        out.append(DestinationOut(name=name, state=state, detail=detail, since=since, dead=dead.get(name, 0)))
    return out


def _reconciler(engine: Any) -> list[ReconcileOut]:
    with unit(engine) as u:
        found = kv.with_prefix_json(u, "fhir.reconcile.")
    return [ReconcileOut(source=k[len("fhir.reconcile."):], at=v.get("at"), reason=v.get("reason"),
                         resources=int(v.get("resources") or 0), deletes=int(v.get("deletes") or 0),
                         stored=int(v.get("stored") or 0), errors=[str(e) for e in v.get("errors") or []])
            for k, v in found.items()]


def figures(runtime: Any, now: float | None = None) -> OverviewOut:
    """Everything the overview shows, read now (a few indexed reads; no count over messages)."""
    now = time.time() if now is None else now
    engine = runtime.engine
    db = rollups.now_figures(engine, now)
    by_status: dict[str, int] = defaultdict(int)
    dead: dict[str, int] = defaultdict(int)
    for d in db.deliveries:
        by_status[d.status] += int(d.rows)
        if d.status == DeliveryStatus.DEAD:
            dead[d.destination] += int(d.rows)
    oldest, due = db.oldest_received_at, db.oldest_due_at
    return OverviewOut(
        at=now, ingest=_series(engine, "ingest", now), attempts=_series(engine, "attempt", now),
        backlog=db.backlog, backlog_capped=db.backlog_capped, lag_s=max(0.0, now - oldest) if oldest is not None else 0.0,
        triggers_pending=db.triggers_pending, triggers_due=db.triggers_due,
        scheduler_lag_s=max(0.0, now - due) if due is not None and due <= now else 0.0,
        deliveries=dict(sorted(by_status.items())), dead_letters=sum(dead.values()),
        destinations=_destinations(runtime, dead), reconciler=_reconciler(engine),
    )


@router.get("/api/overview", response_model=OverviewOut)
def overview(request: Request) -> OverviewOut:
    return figures(request.app.state.runtime)
