"""Evaluate a rule set against one clinical event (pure: ``now`` is an argument).

Returns one :class:`Decision` per rule listening to the event type, each with the
reason it fired or did not (``careloop explain`` prints these), and the
cancellations the event causes for pending triggers (``unless`` / ``wait_for``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..model import ClinicalEvent
from .fhirpath import first_value, truthy
from .load import CompiledRule, RuleSet
from .spec import parse_duration
from .timing import add_duration, apply_quiet_hours, make_calendar, parse_fhir_datetime

#: a trigger due less than this far in the past still fires now (clock skew, processing lag)
PAST_GRACE = timedelta(minutes=5)


@dataclass
class Decision:
    rule_id: str
    fired: bool
    reason: str
    status: str | None = None  # "pending" | "skipped" | "suppressed"
    due_at: datetime | None = None
    trigger: str | None = None
    destinations: list[str] = field(default_factory=list)
    purpose: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    dedup_key: str | None = None
    dedup_window_s: float | None = None
    cancel_scope: str | None = None
    message_kind: str | None = None
    steps: list[str] = field(default_factory=list)


@dataclass
class Cancellation:
    rule_id: str
    scope: str
    reason: str


def _env(event: ClinicalEvent, patient: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "previous": event.previous or {},
        "patient": patient or {},
        "event": {"type": event.type, "previousStatus": event.previous_status, "status": event.status},
    }


def _zone(patient: dict[str, Any] | None, rs: RuleSet, source_zone: str | None, which: str) -> str:
    if which not in ("patient", "site"):
        return which
    if which == "patient" and patient:
        for ext in patient.get("extension") or []:
            if ext.get("url", "").endswith("patient-timezone") and ext.get("valueCode"):
                return str(ext["valueCode"])
    return source_zone or rs.settings.site_timezone


def cancellations(event: ClinicalEvent, rs: RuleSet, patient: dict[str, Any] | None) -> list[Cancellation]:
    """Pending triggers this event cancels: (rule, scope) pairs."""
    out: list[Cancellation] = []
    env = _env(event, patient)
    for cr, idx in rs.cancellers.get(event.type, []):
        if idx >= 0:
            u = cr.rule.unless[idx]
            cond = cr.unless_where[idx]
            same = u.same
        else:
            assert cr.rule.wait_for is not None
            cond, same = cr.wait_where, cr.rule.wait_for.same
        if cond is not None and not truthy(cond(event.resource, env)):
            continue
        scope = event.patient_key if same == "patient" else event.resource_key
        if scope:
            out.append(Cancellation(cr.id, f"{same}:{scope}", f"{event.type} for the same {same}"))
    return out


def evaluate(
    event: ClinicalEvent,
    rs: RuleSet,
    *,
    now: datetime,
    patient: dict[str, Any] | None = None,
    source_zone: str | None = None,
) -> list[Decision]:
    """Decide, for each rule listening to ``event.type``, whether and when it fires."""
    decisions: list[Decision] = []
    env = _env(event, patient)
    for cr in rs.by_event.get(event.type, []):
        decisions.append(_one(cr, event, rs, env, now, patient, source_zone))
    return decisions


def _one(
    cr: CompiledRule,
    event: ClinicalEvent,
    rs: RuleSet,
    env: dict[str, Any],
    now: datetime,
    patient: dict[str, Any] | None,
    source_zone: str | None,
) -> Decision:
    r = cr.rule
    d = Decision(rule_id=r.id, fired=False, reason="", trigger=r.emit.trigger, destinations=list(r.emit.destinations), purpose=r.purpose, message_kind=r.message_kind or r.purpose)
    d.steps.append(f"event {event.type} matches on: {', '.join(r.on)}")
    if event.arrival == "backfill" and not r.include_backfill:
        d.reason = "backfilled resource (rule does not opt in with include_backfill)"
        return d
    if r.from_ is not None and event.previous_status not in r.from_:
        d.reason = f"previous status {event.previous_status!r} not in from: {r.from_}"
        return d
    if r.to is not None and event.status not in r.to:
        d.reason = f"status {event.status!r} not in to: {r.to}"
        return d
    if cr.where is not None:
        try:
            ok = truthy(cr.where(event.resource, env))
        except Exception as exc:
            d.reason = f"where could not be evaluated: {exc}"
            return d
        if not ok:
            d.reason = f"where is false: {r.where}"
            return d
        d.steps.append(f"where is true: {r.where}")
    if patient and (patient.get("deceasedBoolean") is True or patient.get("deceasedDateTime")):
        d.fired, d.status, d.reason = True, "suppressed", "patient is deceased"
        return d
    # payload
    for k, fn in cr.payload.items():
        try:
            d.payload[k] = first_value(fn(event.resource, env)) if callable(fn) else fn
        except Exception as exc:
            d.payload[k] = None
            d.steps.append(f"payload.{k} could not be evaluated: {exc}")
    d.payload.setdefault("purpose", r.purpose)
    # timing
    zone = _zone(patient, rs, source_zone, "site")
    cal = make_calendar(rs.settings.holiday_calendar, rs.settings.holidays)
    when = r.when
    event_time = event.occurred_at
    if when.at:
        assert cr.at is not None
        base = parse_fhir_datetime(_str(first_value(cr.at(event.resource, env))), zone)
        if base is None:
            d.reason = f"when.at ({when.at}) has no value on this resource"
            return d
        due = base
        if when.offset:
            sign = -1 if when.offset.strip().startswith("-") else 1
            due = add_duration(base, when.offset.strip().lstrip("+-"), cal, zone, sign)
        d.steps.append(f"due at {when.at} {when.offset or ''} = {due.isoformat()}")
    elif when.after:
        due = add_duration(event_time, when.after, cal, zone)
        d.steps.append(f"due {when.after} after the event ({event_time.isoformat()}) = {due.isoformat()}")
    elif r.wait_for:
        due = add_duration(event_time, r.wait_for.timeout, cal, zone)
        d.steps.append(f"waits {r.wait_for.timeout} for {', '.join(r.wait_for.events)}; gap branch due {due.isoformat()}")
    else:
        due = now
    if due < now - PAST_GRACE:
        if when.skip_if_past:
            d.fired, d.status, d.due_at = True, "skipped", due
            d.reason = f"due time {due.isoformat()} has already passed"
            return d
    qh = when.quiet_hours or rs.settings.quiet_hours
    if qh is not None and r.channel in ("sms", "voice", "push", "none"):
        qzone = _zone(patient, rs, source_zone, qh.zone)
        moved = apply_quiet_hours(max(due, now), qh, qzone)
        if moved != max(due, now):
            d.steps.append(f"quiet hours {qh.start}-{qh.end} {qzone}: moved to {moved.isoformat()}")
            due = moved
    if when.not_after and cr.not_after is not None:
        limit = parse_fhir_datetime(_str(first_value(cr.not_after(event.resource, env))), zone)
        if limit is not None and due >= limit:
            d.fired, d.status, d.due_at = True, "skipped", due
            d.reason = f"due time {due.isoformat()} is not before {when.not_after} ({limit.isoformat()})"
            return d
    due = max(due, now)
    d.due_at = due
    # dedup
    if r.dedup and cr.dedup_key is not None:
        key = first_value(cr.dedup_key(event.resource, env))
        d.dedup_key = f"{event.patient_key}|{r.emit.trigger}|{key}"
        d.dedup_window_s = parse_duration(r.dedup.window)[0]
    scope_kind = "resource" if any(u.same == "resource" for u in r.unless) or (r.wait_for and r.wait_for.same == "resource") else "patient"
    scope = event.resource_key if scope_kind == "resource" else event.patient_key
    d.cancel_scope = f"{scope_kind}:{scope}"
    d.fired, d.status = True, "pending"
    d.reason = "conditions met" + (" (fires now)" if due <= now else f" (scheduled for {due.isoformat()})")
    return d


def _str(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)
