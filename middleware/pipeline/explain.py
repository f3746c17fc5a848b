"""What careloop would do with some inputs, and why: the dry run behind ``careloop explain`` and
the console's rules playground (one implementation, so the two cannot disagree).

:func:`explain` feeds inputs (HL7 v2 messages or FHIR resources/Bundles) in order through the
real pipeline on a throw-away database (:class:`~middleware.pipeline.dryrun.DryRun`) on a
simulated clock, and returns every event with each rule's decision (the clause-by-clause trace
of a false ``where``), the goal window a fired rule opens, the exact body each destination would
receive after its policy, and the timeline of triggers (scheduled, fired, cancelled, skipped,
suppressed, moved by quiet hours or caps) and journeys. Nothing is stored or sent.

:func:`validate` and :func:`golden` are ``careloop mappings validate`` and ``careloop mappings test``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from ..config.yamlpos import Diagnostic
from ..rules.load import RuleSet


@dataclass(frozen=True)
class Input:
    """One input: its shown name, its bytes, a label for the dry run, and an optional clock
    (an ISO time, no offset meaning the site's zone, or ``+DURATION``)."""

    name: str
    data: bytes
    label: str
    when: str | None = None


class ClockBackwards(ValueError):
    """An input's clock is earlier than the simulated clock already is."""


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


def split_inputs(name: str, data: bytes, when: str | None = None) -> tuple[list[Input], list[str]]:
    """An HL7 batch as one input per message (``name#n``, the clock moving before the first),
    anything else as one input; with the batch's problems."""
    from ..normalize.hl7_batch import is_batch, split_batch

    label = Path(name).name
    if not is_batch(data):
        return [Input(name, data, label, when)], []
    batch = split_batch(data)
    messages = [m for part in batch.parts for m in part.messages]
    inputs = [Input(f"{name}#{n}", m, f"{label}#{n}", when if n == 1 else None) for n, m in enumerate(messages, start=1)]
    return inputs, list(batch.problems)


def clock_at(when: str, now: datetime, rs: RuleSet) -> datetime:
    """The clock for an input: an ISO time (no offset: the site's zone) or ``+DURATION`` after ``now``
    (``d``/``w`` are calendar days in the site's zone, ``bd`` business days, as in rules)."""
    from ..rules.timing import add_duration, make_calendar

    zone = rs.settings.site_timezone
    if when.startswith("+"):
        cal = make_calendar(rs.settings.holiday_calendar, rs.settings.holidays)
        return add_duration(now, when[1:], cal, zone)
    at = datetime.fromisoformat(when)
    return at if at.tzinfo else at.replace(tzinfo=ZoneInfo(zone))


def goal_of(rs: RuleSet, rule_id: str, resource: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """The goal of a fired rule and the window this entry would be measured in (docs/outcomes.md)."""
    from ..outcomes.track import book_for

    book = book_for(rs)
    goal_id = book.by_rule.get(rule_id)
    if goal_id is None:
        return None
    cg = book.goals[goal_id]
    g = cg.goal
    got = cg.window_for(resource, now)
    unit = {"calendar_days": "local calendar days", "business_days": "business days", "hours": "hours"}[g.window.unit]
    what = (f"{' or '.join(g.on)}" + (f" where {g.where.strip()}" if g.where else "")
            + f" for the same {'appointment/encounter' if g.same == 'resource' else 'patient'}"
            + f", {unit} {g.window.from_}-{g.window.to} after the {'change' if g.anchored_at == 'recorded' else g.anchor or 'anchor'}")
    zone = ZoneInfo(rs.settings.site_timezone)
    return {"id": g.id, "what": what, "aligned_with": g.aligned_with,
            "opens": got[1].opens.astimezone(zone).isoformat() if got else None,
            "closes": got[1].closes.astimezone(zone).isoformat() if got else None}


def destination_bodies(rs: RuleSet, d: Any, patient_key: str | None) -> dict[str, dict[str, Any]]:
    """Per destination, what it would receive for this decision after its policy: the same
    ``config.policy.outgoing`` the worker applies; for webhooks the exact JSON body."""
    from ..config.policy import identifier_for, outgoing
    from ..delivery.registry import Outbound, connector_types

    out: dict[str, dict[str, Any]] = {}
    for name in d.destinations:
        dest = rs.destinations.get(name)
        if dest is None:
            continue
        proj = outgoing(dict(d.payload), dest.policy, "<careloop link_base>/api/triggers/<id>")
        ck = (identifier_for(dest.policy, "", patient_key) if dest.policy.identifiers == "mrn"
              else "ck_<HMAC of the patient key, computed at send time>")
        item = Outbound(delivery_id=0, idempotency_key="<idempotency key>", destination=name, trigger_id=0,
                        trigger_name=d.trigger or "", rule_id=d.rule_id, purpose=d.purpose or "", contact_key=ck,
                        payload=dict(proj.payload), occurred_at=d.due_at or datetime.now(timezone.utc))
        body: dict[str, Any] = {"contact_key": ck, **proj.payload}
        form = f"{dest.type} payload after policy; the connector maps it to its API"
        if dest.type == "webhook":
            from ..config.connectors import WebhookConfig
            from ..delivery.connectors.webhook import build_body

            if connector_types().get("webhook") is not None:
                body = build_body(item, WebhookConfig.model_validate(dest.config))
                form = "webhook body after policy"
        out[name] = {"form": form, "body": body, "stripped": proj.stripped}
    return out


def journey_of(rows: list[Any]) -> list[dict[str, Any]]:
    """The journey as a timeline: each trigger scheduled (with its due time), then
    fired, cancelled, skipped or suppressed, with the recorded reason, in time order."""
    out: list[dict[str, Any]] = []
    for t in rows:
        base = {"trigger_id": t.id, "rule": t.rule_id, "trigger": t.name}
        if t.status in ("pending", "fired", "cancelled") or "moved" in (t.reason or ""):
            out.append(base | {"at": iso(t.created_at), "what": "scheduled", "why": f"due {iso(t.due_at)}"})
        if t.status == "fired":
            out.append(base | {"at": iso(t.fired_at), "what": "fired", "why": t.reason or ""})
        elif t.status != "pending":
            out.append(base | {"at": iso(t.updated_at), "what": t.status, "why": t.reason or ""})
    return sorted(out, key=lambda j: (j["at"] or "", j["trigger_id"] or 0))


def explain(rs: RuleSet, inputs: list[Input], now: datetime, *, horizon_days: float = 0.0) -> dict[str, Any]:
    """The dry run of ``inputs`` (in order, one journey) from ``now``: a JSON-ready dict with
    ``ruleset_version``, ``now``, ``events`` (each with ``rules``: decision, reason, steps, goal,
    destination bodies; or ``error``), ``timeline`` (trigger rows), ``journey`` (what happened
    when), ``journeys`` (steps, planned times, exits) and ``notes`` (input, note) pairs.
    Raises :class:`ClockBackwards` when an input's clock is earlier than the simulated one."""
    from ..rules.clauses import EXPLAIN_CLAUSES
    from ..rules.journeys import timeline as journey_timeline
    from .dryrun import DryRun

    token = EXPLAIN_CLAUSES.set(True)  # a false `where` is shown clause by clause
    dry = DryRun(rs, now)
    events: list[dict[str, Any]] = []
    notes: list[tuple[str, str]] = []
    try:
        for inp in inputs:
            f = inp.name
            if inp.when is not None:
                target = clock_at(inp.when, dry.now, rs)
                if target < dry.now:
                    raise ClockBackwards(f"{f}@{inp.when}: the clock cannot move back (it is {dry.now.isoformat()})")
                dry.fire_until(target)
            try:
                step = dry.feed(inp.data, inp.label)
            except (orjson.JSONDecodeError, AttributeError):
                events.append({"input": f, "error": "unreadable input", "type": None, "resource": None, "rules": []})
                continue
            if step.error:
                events.append({"input": f, "error": step.error, "type": None, "resource": None, "rules": []})
                continue
            for ev, decisions in step.result.decisions:
                events.append({
                    "input": f, "at": dry.now.isoformat(), "type": ev.type, "previous_status": ev.previous_status,
                    "status": ev.status, "resource": ev.resource, "patient_key": ev.patient_key,
                    "rules": [{"rule": d.rule_id, "fired": d.fired, "status": d.status, "reason": d.reason,
                               "due_at": d.due_at.isoformat() if d.due_at else None, "trigger": d.trigger,
                               "payload": d.payload if d.fired else None, "steps": d.steps,
                               "goal": goal_of(rs, d.rule_id, ev.resource, dry.now) if d.fired else None,
                               "destinations": destination_bodies(rs, d, ev.patient_key) if d.status == "pending" else {}}
                              for d in decisions],
                })
            for e in step.result.events:
                if not any(x.get("type") == e.type and x.get("input") == f for x in events):
                    events.append({"input": f, "type": e.type, "previous_status": e.previous_status, "status": e.status,
                                   "resource": orjson.loads(e.resource), "rules": []})
            if step.result.note and not step.result.events:
                notes.append((f, step.result.note))
        if horizon_days:
            dry.fire_until(now + timedelta(days=horizon_days))
        rows = dry.triggers()
        timeline = [{"id": t.id, "rule": t.rule_id, "trigger": t.name, "status": t.status, "reason": t.reason,
                     "due_at": iso(t.due_at), "fired_at": iso(t.fired_at), "journey_id": t.journey_id,
                     "journey_step": t.journey_step, "flag": t.flag} for t in rows]
        journey = journey_of(rows)
        journeys = journey_timeline(rows, rs)
    finally:
        dry.close()
        EXPLAIN_CLAUSES.reset(token)
    return {"ruleset_version": rs.version, "now": now.isoformat(), "events": events, "timeline": timeline,
            "journey": journey, "journeys": journeys, "notes": notes}


def validate(directory: Path) -> tuple[RuleSet | None, list[Diagnostic]]:
    """``careloop mappings validate``: the rule set (``None`` on an error) and every finding
    (file:line:col), the golden test files' own findings included."""
    from ..rules.golden import load_cases, test_files
    from ..rules.load import load_ruleset

    rs, diags = load_ruleset(directory)
    for tf in test_files(directory):  # golden test files: YAML and structure (duplicate keys...) too
        test_diags = load_cases(tf)[2]
        diags += test_diags
        if rs is not None and any(d.level == "error" for d in test_diags):
            rs = None
    return rs, diags


def golden(directory: Path, rs: RuleSet, *, name_filter: str | None = None) -> tuple[list[Any], list[Diagnostic]]:
    """``careloop mappings test``: every golden case under ``directory/rules`` run against ``rs``
    on a dry run each (results with path, line, name, failures, error, timeline)."""
    from ..rules.golden import run_directory
    from .dryrun import DryRun

    return run_directory(directory, rs, DryRun, name_filter=name_filter)
