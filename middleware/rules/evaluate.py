"""Evaluate a rule set against one clinical event (pure: ``now`` is an argument).

Returns one :class:`Decision` per rule listening to the event type, each with the
reason it fired or did not (``careloop explain`` prints these), and the
cancellations the event causes for pending triggers (``unless`` / ``wait_for``).

FHIRPath environment (``%name``) seen by every expression of a rule:

* ``%previous`` the last known version of the resource (empty on first sighting)
* ``%patient`` the Patient; ``%age`` whole years at ``now``; ``%hospice`` true when the
  data says hospice care
* ``%diagnoses`` an encounter's diagnoses (the ``code`` of each referenced Condition)
* ``%conditions`` a CarePlan's ``addresses``: the Condition resources (contained ones, others
  read from the FHIR source by the pipeline). When one could not be read, a rule using
  ``%conditions`` cannot be evaluated (``status: unevaluable``), which is not false
* ``%activity`` for ``careplan.activity.*``: the activities that changed to that status
* ``%event`` ``{type, previousStatus, status}``; ``%now`` the (simulated) clock
* in ``unless.where`` / ``wait_for.where`` only: ``%origin`` the resource that created
  the pending trigger and ``%payload`` its payload
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..model import ClinicalEvent, Conditions
from .clauses import EXPLAIN_CLAUSES, explain_where
from .conditions import local_conditions
from .fhirpath import Compiled, first_value, truthy
from .load import CompiledRule, RuleSet
from .spec import parse_duration
from .suppress import age_in_years, is_deceased
from .sendtime import PAST_GRACE, SendTime, parse_time_of_day, patient_zone, place
from .timing import add_duration, apply_quiet_hours, make_calendar, parse_fhir_datetime


@dataclass
class Decision:
    rule_id: str
    fired: bool
    reason: str
    status: str | None = None  # "pending" | "skipped" | "suppressed"; "unevaluable" (not fired, not false)
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
    journey_id: str | None = None
    journey_step: int | None = None


@dataclass
class Cancellation:
    """This event cancels pending triggers of ``rule_id`` in ``scope`` for which :meth:`applies`."""

    rule_id: str
    same: str  # "patient" | "resource"
    key: str
    reason: str
    condition: Compiled | None = None
    within_s: float | None = None
    env: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return f"{self.same}:{self.key}"

    def applies(self, origin: dict[str, Any] | None, payload: dict[str, Any] | None) -> bool:
        """Evaluate ``where`` with ``%origin``/``%payload`` of one pending trigger."""
        if self.condition is None:
            return True
        env = dict(self.env, origin=origin or {}, payload=payload or {})
        try:
            return truthy(self.condition(self.resource, env))
        except Exception:
            return False


def diagnoses(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The code of each Condition an Encounter's ``diagnosis`` references (contained ones)."""
    contained = {c.get("id"): c for c in resource.get("contained") or [] if c.get("resourceType") == "Condition"}
    out = []
    for dx in resource.get("diagnosis") or []:
        ref = str(((dx.get("condition") or {}).get("reference")) or "")
        cond = contained.get(ref[1:]) if ref.startswith("#") else None
        if cond and cond.get("code"):
            out.append(cond["code"])
    return out


def activity_key(act: dict[str, Any], index: int) -> str:
    """Identity of a CarePlan activity across versions (as ``normalize.events`` keys it)."""
    ref = (act.get("reference") or {}).get("reference")
    if ref:
        return str(ref)
    code = (((act.get("detail") or {}).get("code") or {}).get("coding") or [{}])[0]
    return f"{code.get('system', '')}|{code.get('code', '')}|{index}"


def changed_activities(event: ClinicalEvent) -> list[dict[str, Any]]:
    """For ``careplan.activity.<status>``: the activities that changed to ``<status>``."""
    if not event.type.startswith("careplan.activity."):
        return []
    before = {activity_key(a, i): (a.get("detail") or {}).get("status")
              for i, a in enumerate((event.previous or {}).get("activity") or [])}
    out = []
    for i, a in enumerate(event.resource.get("activity") or []):
        st = (a.get("detail") or {}).get("status")
        if st == event.status and before.get(activity_key(a, i)) != st:
            out.append(a)
    return out


def conditions_of(event: ClinicalEvent) -> Conditions:
    """``%conditions`` of the event's resource: what the pipeline resolved, else the contained ones."""
    if event.resource_type != "CarePlan":
        return Conditions()
    return event.conditions if event.conditions is not None else local_conditions(event.resource)


def uses_conditions(cr: CompiledRule) -> bool:
    """Whether any expression of the rule reads ``%conditions``."""
    return "%conditions" in cr.rule.model_dump_json()


def build_env(event: ClinicalEvent, patient: dict[str, Any] | None, now: datetime, hospice: str | None = None,
              nth: int | None = None) -> dict[str, Any]:
    """The ``%`` variables every expression sees (see the module docstring). ``nth``: this
    is the nth event of its type from one change (one per activity that changed)."""
    acts = changed_activities(event)
    if nth is not None and len(acts) > 1:
        acts = acts[nth:nth + 1]
    age = age_in_years((patient or {}).get("birthDate"), now.date())
    return {
        "previous": event.previous or {},
        "patient": patient or {},
        "event": {"type": event.type, "previousStatus": event.previous_status, "status": event.status},
        "now": now.isoformat(),
        "age": age if age is not None else [],
        "hospice": bool(hospice),
        "diagnoses": diagnoses(event.resource) if event.resource_type == "Encounter" else [],
        "activity": acts,
        "conditions": list(conditions_of(event).items),
        "origin": {},
        "payload": {},
    }


def _zone(patient: dict[str, Any] | None, rs: RuleSet, source_zone: str | None, which: str) -> str:
    return _zone_why(patient, rs, source_zone, which)[0]


def _zone_why(patient: dict[str, Any] | None, rs: RuleSet, source_zone: str | None, which: str) -> tuple[str, str]:
    """``which``: "patient" (the patient's zone, else the site's), "site" (the source's zone,
    else ``settings.site_timezone``) or an IANA name; with where the zone came from."""
    if which not in ("patient", "site"):
        return which, "named"
    if which == "patient":
        found = patient_zone(patient, from_address=rs.settings.zone_from_address)
        if found:
            return found
    if source_zone:
        return source_zone, "the site's (the source's timezone)"
    return rs.settings.site_timezone, "the site's (settings.site_timezone)"


def cancellations(event: ClinicalEvent, rs: RuleSet, patient: dict[str, Any] | None, now: datetime | None = None,
                  nth: int | None = None) -> list[Cancellation]:
    """What this event cancels: one :class:`Cancellation` per (rule, unless/wait_for) it matches."""
    out: list[Cancellation] = []
    env = build_env(event, patient, now or event.occurred_at, None, nth)
    unread = conditions_of(event).error
    for cr, idx in rs.cancellers.get(event.type, []):
        if unread and uses_conditions(cr):
            continue  # cannot be evaluated: never cancel on data that could not be read
        if idx >= 0:
            u = cr.rule.unless[idx]
            cond, same, within = cr.unless_where[idx], u.same, (parse_duration(u.within)[0] if u.within else None)
            exit_name = cr.journey.exit_name(idx) if cr.journey else None
            what = f"journey {cr.journey.journey_id} exit '{exit_name}'" if cr.journey and exit_name else "unless"
        else:
            assert cr.rule.wait_for is not None
            cond, same, within, what = cr.wait_where, cr.rule.wait_for.same, None, "awaited event arrived"
        key = event.patient_key if same == "patient" else event.resource_key
        if key:
            out.append(Cancellation(cr.id, same, key, f"{what}: {event.type} for the same {same}", cond, within, env, event.resource))
    return out


def evaluate(
    event: ClinicalEvent,
    rs: RuleSet,
    *,
    now: datetime,
    patient: dict[str, Any] | None = None,
    source_zone: str | None = None,
    hospice: str | None = None,
    only: set[str] | None = None,
    nth: int | None = None,
) -> list[Decision]:
    """Decide, for each rule listening to ``event.type`` (or only the rules in ``only``), whether and when it fires."""
    env = build_env(event, patient, now, hospice, nth)
    unread = conditions_of(event).error
    return [_one(cr, event, rs, env, now, patient, source_zone, hospice, unread)
            for cr in rs.by_event.get(event.type, []) if only is None or cr.id in only]


def _one(cr: CompiledRule, event: ClinicalEvent, rs: RuleSet, env: dict[str, Any], now: datetime,
         patient: dict[str, Any] | None, source_zone: str | None, hospice: str | None,
         unread: str | None = None) -> Decision:
    r = cr.rule
    d = Decision(rule_id=r.id, fired=False, reason="", trigger=r.emit.trigger, destinations=list(r.emit.destinations),
                 purpose=r.purpose, message_kind=r.message_kind or r.purpose,
                 journey_id=cr.journey.journey_id if cr.journey else None, journey_step=cr.journey.step if cr.journey else None)
    if cr.journey:
        d.steps.append(f"journey {cr.journey.journey_id}, step {cr.journey.step} of {cr.journey.steps} "
                       f"({cr.journey.step_id})")
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
    if unread and uses_conditions(cr):
        d.status = "unevaluable"
        d.reason = f"cannot be evaluated: %conditions: {unread}"
        return d
    if cr.where is not None:
        try:
            ok = truthy(cr.where(event.resource, env))
        except Exception as exc:
            d.reason = f"where could not be evaluated: {exc}"
            return d
        if not ok:
            d.reason = f"where is false: {' '.join(str(r.where).split())}"
            if EXPLAIN_CLAUSES.get():
                d.steps += explain_where(str(r.where), event.resource, env, rs)
            return d
        d.steps.append("where is true")
    if is_deceased(patient):
        d.fired, d.status, d.reason = True, "suppressed", "patient is deceased"
        return d
    if hospice and rs.settings.suppress_hospice:
        d.fired, d.status, d.reason = True, "suppressed", f"hospice: {hospice}"
        return d
    due = _due(cr, event, rs, env, now, patient, source_zone, d)
    if due is None:
        return d
    d.due_at = due
    env = dict(env, due=due.isoformat())
    for k, fn in cr.payload.items():
        try:
            d.payload[k] = first_value(fn(event.resource, env))
        except Exception as exc:
            d.payload[k] = None
            d.steps.append(f"payload.{k} could not be evaluated: {exc}")
    d.payload.setdefault("purpose", r.purpose)
    if d.status == "skipped":
        return d
    if r.dedup and cr.dedup_key is not None:
        key = first_value(cr.dedup_key(event.resource, env))
        # a journey has one dedup scope: every step carries the journey's key (rules/journeys.py)
        scope_name = f"journey:{cr.journey.journey_id}" if cr.journey else r.emit.trigger
        d.dedup_key = f"{event.patient_key}|{scope_name}|{key}"
        d.dedup_window_s = parse_duration(r.dedup.window)[0]
    scope_kind = "resource" if any(u.same == "resource" for u in r.unless) or (r.wait_for and r.wait_for.same == "resource") else "patient"
    scope = event.resource_key if scope_kind == "resource" else event.patient_key
    d.cancel_scope = f"{scope_kind}:{scope}"
    d.fired, d.status = True, "pending"
    d.reason = "conditions met" + (" (fires now)" if due <= now else f" (scheduled for {due.isoformat()})")
    return d


def _due(cr: CompiledRule, event: ClinicalEvent, rs: RuleSet, env: dict[str, Any], now: datetime,
         patient: dict[str, Any] | None, source_zone: str | None, d: Decision) -> datetime | None:
    """The due time, or None (with ``d`` saying why) when the rule cannot be timed; sets
    ``d.status = "skipped"`` when the time has passed or quiet hours push it too late."""
    r, when = cr.rule, cr.rule.when
    send = SendTime(parse_time_of_day(when.at_time) if when.at_time else None, when.business_days, when.if_time_passed)
    # with a send time, dates are the patient's (else the site's); without, the site's as before
    zone, zone_why = _zone_why(patient, rs, source_zone, "patient" if send.active else "site")
    cal = make_calendar(rs.settings.holiday_calendar, rs.settings.holidays)
    if when.at:
        assert cr.at is not None
        base = parse_fhir_datetime(_str(first_value(cr.at(event.resource, env))), zone)
        if base is None:
            d.reason = f"when.at ({when.at}) has no value on this resource"
            return None
        due = base
        if when.offset:
            sign = -1 if when.offset.strip().startswith("-") else 1
            due = add_duration(base, when.offset.strip().lstrip("+-"), cal, zone, sign)
        d.steps.append(f"due at {when.at} {when.offset or ''} = {due.isoformat()}")
    elif when.after:
        due = add_duration(event.occurred_at, when.after, cal, zone)
        d.steps.append(f"due {when.after} after the event ({event.occurred_at.isoformat()}) = {due.isoformat()}")
    elif r.wait_for:
        due = add_duration(event.occurred_at, r.wait_for.timeout, cal, zone)
        d.steps.append(f"waits {r.wait_for.timeout} for {', '.join(r.wait_for.events)}; gap branch due {due.isoformat()}")
    else:
        due = now
    if send.active:
        d.steps.append(f"send zone {zone}: {zone_why}")
        placed = place(due, send, zone=zone, now=now, country=cal.country, extra_holidays=cal.extra,
                       not_before=due if r.wait_for else None)
        d.steps += placed.steps
        if placed.skipped:
            d.fired, d.status, d.reason = True, "skipped", placed.skipped
            return placed.due
        due = placed.due
    if due < now - PAST_GRACE:
        if when.skip_if_past:
            d.fired, d.status = True, "skipped"
            d.reason = f"due time {due.isoformat()} has already passed"
            return due
        d.steps.append(f"due time {due.isoformat()} has passed; skip_if_past is false: fires now")
    due = max(due, now)
    qh = when.quiet_hours or rs.settings.quiet_hours
    moved_by_quiet = False
    if qh is not None and r.channel in ("sms", "voice", "push", "none"):
        qzone = _zone(patient, rs, source_zone, qh.zone)
        moved = apply_quiet_hours(due, qh, qzone)
        if moved != due:
            d.steps.append(f"quiet hours {qh.start}-{qh.end} {qzone}: moved to {moved.isoformat()}")
            due, moved_by_quiet = moved, True
    if when.not_after and cr.not_after is not None:
        limit = parse_fhir_datetime(_str(first_value(cr.not_after(event.resource, env))), zone)
        if limit is not None and due >= limit:
            d.fired, d.status = True, "skipped"
            why = "quiet hours push it to" if moved_by_quiet else "due time"
            d.reason = f"{why} {due.isoformat()}, not before {when.not_after} ({limit.isoformat()})"
            return due
    return due


def _str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    return str(getattr(v, "toString", lambda: v)())
