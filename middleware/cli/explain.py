"""``careloop explain``: what careloop would do with a message or resource, and why."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from zoneinfo import ZoneInfo

import orjson


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


def _site_time(text: str, flag: str, zone: ZoneInfo) -> datetime:
    """An ISO time (or a relative one such as ``-2d``); written without an offset, it is read in the site's zone."""
    from ._times import parse_time

    at = parse_time(text, flag)
    try:
        naive = datetime.fromisoformat(text.strip()).tzinfo is None
    except ValueError:
        naive = False
    return at.replace(tzinfo=zone) if naive else at


def _goal_of(rs: Any, rule_id: str, resource: dict[str, Any], now: datetime) -> dict[str, Any] | None:
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


def cmd_explain(args: argparse.Namespace) -> int:
    from ..pipeline.dryrun import DryRun
    from .serve import load_rules_or_report
    from ..storage.tables import EventRow  # noqa: F401
    from ..rules.journeys import format_timeline, timeline as journey_timeline

    try:
        specs = [split_timed(a) for a in args.files]
    except ValueError as exc:
        print(f"careloop explain: {exc}", file=sys.stderr)
        return 2
    missing = [f for f, _ in specs if not Path(f).is_file()]
    if missing:
        print(f"careloop explain: no such file: {missing[0]}", file=sys.stderr)
        return 2
    rs = load_rules_or_report(args.mappings)
    if rs is None:
        return 1
    zone = ZoneInfo(rs.settings.site_timezone)
    first = specs[0][1] if specs else None
    if args.now:
        now = _site_time(args.now, "--now", zone)
    elif first is not None and not first.startswith(("+", "-")):
        now = _site_time(first, f"{specs[0][0]}@", zone)
    else:
        now = datetime.now(timezone.utc)
    from ..rules.clauses import EXPLAIN_CLAUSES

    EXPLAIN_CLAUSES.set(True)  # a false `where` is shown clause by clause
    dry = DryRun(rs, now)
    out_events: list[dict[str, Any]] = []
    rc = 0
    try:
        for f, data, label, when in _inputs(specs):
            if when is not None:
                target = clock_at(when, dry.now, rs)
                if target < dry.now:
                    print(f"careloop explain: {f}@{when}: the clock cannot move back (it is {dry.now.isoformat()})",
                          file=sys.stderr)
                    return 2
                dry.fire_until(target)
            try:
                step = dry.feed(data, label)
            except orjson.JSONDecodeError:
                rc = 1
                print(f"{f}: error: neither an HL7 v2 message or batch nor FHIR JSON", file=sys.stderr)
                out_events.append({"input": f, "error": "unreadable input", "type": None, "resource": None, "rules": []})
                continue
            if step.error:
                rc = 1
                if not args.json:
                    print(f"{f}: error: {step.error}")
                out_events.append({"input": f, "error": step.error, "type": None, "resource": None, "rules": []})
                continue
            for ev, decisions in step.result.decisions:
                out_events.append({
                    "input": f, "at": dry.now.isoformat(), "type": ev.type, "previous_status": ev.previous_status, "status": ev.status,
                    "resource": ev.resource, "patient_key": ev.patient_key,
                    "rules": [{"rule": d.rule_id, "fired": d.fired, "status": d.status, "reason": d.reason,
                               "due_at": d.due_at.isoformat() if d.due_at else None, "trigger": d.trigger,
                               "payload": d.payload if d.fired else None, "steps": d.steps,
                               "goal": _goal_of(rs, d.rule_id, ev.resource, dry.now) if d.fired else None,
                               "destinations": destination_bodies(rs, d, ev.patient_key) if d.status == "pending" else {}}
                              for d in decisions],
                })
            for e in step.result.events:
                if not any(x.get("type") == e.type and x.get("input") == f for x in out_events):
                    out_events.append({"input": f, "type": e.type, "previous_status": e.previous_status, "status": e.status,
                                       "resource": orjson.loads(e.resource), "rules": []})
            if step.result.note and not step.result.events and not args.json:
                print(f"{f}: {step.result.note}")
        if args.horizon_days:
            dry.fire_until(now + timedelta(days=args.horizon_days))
        rows = dry.triggers()
        timeline = [{"id": t.id, "rule": t.rule_id, "trigger": t.name, "status": t.status, "reason": t.reason,
                     "due_at": _iso(t.due_at), "fired_at": _iso(t.fired_at), "journey_id": t.journey_id,
                     "journey_step": t.journey_step, "flag": t.flag} for t in rows]
        journey = journey_of(rows)
        journeys = journey_timeline(rows, rs)
    finally:
        dry.close()
    if args.json:
        sys.stdout.write(orjson.dumps({"ruleset_version": rs.version, "now": now.isoformat(), "events": out_events,
                                       "timeline": timeline, "journey": journey,
                                       "journeys": journeys}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return rc
    for shown in out_events:
        if not shown.get("type"):
            continue
        print(f"\n== {shown['input']} at {shown.get('at')}: event {shown['type']} "
              f"(previous status: {shown.get('previous_status')})")
        res = shown["resource"] or {}
        print(f"   resource {res.get('resourceType')}/{res.get('id')} status={res.get('status')}")
        if args.resources:
            print("   " + orjson.dumps(res, option=orjson.OPT_INDENT_2).decode().replace("\n", "\n   "))
        if not shown["rules"]:
            print("   no rule listens to this event")
        for r in shown["rules"]:
            mark = {"pending": "FIRES", "skipped": "SKIPPED", "suppressed": "SUPPRESSED",
                    "held_out": "HELD OUT", "unevaluable": "CANNOT EVALUATE"}.get(r["status"] or "", "no")
            print(f"   [{mark}] {r['rule']}: {r['reason']}")
            for s in r["steps"]:
                print(f"          - {s}")
            if r.get("goal"):
                g = r["goal"]
                print(f"          goal {g['id']}: {g['what']}; window {g['opens'] or '?'} to {g['closes'] or '?'}"
                      + (f" ({g['aligned_with']})" if g.get("aligned_with") else ""))
            for name, sent in (r.get("destinations") or {}).items():
                body = orjson.dumps(sent["body"]).decode()
                print(f"          > {name} receives ({sent['form']}): {body}")
                if sent["stripped"]:
                    print(f"            stripped by its policy: {', '.join(sent['stripped'])}")
    if journey:
        print("\n== journey (simulated clock)")
        for j in journey:
            print(f"   {j['at']}  {j['what']:<10} #{j['trigger_id']} {j['rule']}: {j['why']}")
    if journeys:
        print("\n== journeys (steps, planned times, exits)")
        for line in format_timeline(journeys):
            print("   " + line)
    return rc


def destination_bodies(rs: Any, d: Any, patient_key: str | None) -> dict[str, dict[str, Any]]:
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


def split_timed(arg: str) -> tuple[str, str | None]:
    """``FILE``, ``FILE@2026-03-01T09:00[-05:00]`` (set the clock) or ``FILE@+2d`` (move it on)."""
    if Path(arg).is_file() or "@" not in arg:
        return arg, None
    f, _, when = arg.rpartition("@")
    if when.startswith(("+", "-")):
        from ..rules.spec import parse_duration

        if when.startswith("-"):
            raise ValueError(f"{arg}: the clock cannot move back ({when}); use a later time or +DURATION")
        try:
            parse_duration(when[1:])
        except ValueError:
            raise ValueError(f"{arg}: '{when}' is not a duration (use e.g. +30m, +4h, +2d, +1w, +2bd)") from None
        return f, when
    try:
        datetime.fromisoformat(when)
    except ValueError:
        raise ValueError(f"{arg}: '{when}' is not a time (use FILE@2026-03-01T09:00, FILE@2026-03-01T09:00-05:00 "
                         "or FILE@+2d)") from None
    return f, when


def clock_at(when: str, now: datetime, rs: Any) -> datetime:
    """The clock for an input: an ISO time (no offset: the site's zone) or ``+DURATION`` after ``now``
    (``d``/``w`` are calendar days in the site's zone, ``bd`` business days, as in rules)."""
    from ..rules.timing import add_duration, make_calendar

    zone = rs.settings.site_timezone
    if when.startswith("+"):
        cal = make_calendar(rs.settings.holiday_calendar, rs.settings.holidays)
        return add_duration(now, when[1:], cal, zone)
    at = datetime.fromisoformat(when)
    return at if at.tzinfo else at.replace(tzinfo=ZoneInfo(zone))


def _inputs(specs: list[tuple[str, str | None]]) -> list[tuple[str, bytes, str, str | None]]:
    """(shown name, bytes, label, clock) per input; an HL7 batch file gives one per message
    (``file#n``), the clock moving before the first."""
    from ..normalize.hl7_batch import is_batch, split_batch

    out: list[tuple[str, bytes, str, str | None]] = []
    for f, when in specs:
        data = Path(f).read_bytes()
        if not is_batch(data):
            out.append((f, data, Path(f).name, when))
            continue
        batch = split_batch(data)
        messages = [m for part in batch.parts for m in part.messages]
        for note in batch.problems:
            print(f"{f}: batch: {note}", file=sys.stderr)
        out += [(f"{f}#{n}", m, f"{Path(f).name}#{n}", when if n == 1 else None) for n, m in enumerate(messages, start=1)]
    return out


def journey_of(rows: list[Any]) -> list[dict[str, Any]]:
    """The journey as a timeline: each trigger scheduled (with its due time), then
    fired, cancelled, skipped or suppressed, with the recorded reason, in time order."""
    out: list[dict[str, Any]] = []
    for t in rows:
        base = {"trigger_id": t.id, "rule": t.rule_id, "trigger": t.name}
        if t.status in ("pending", "fired", "cancelled") or "moved" in (t.reason or ""):
            out.append(base | {"at": _iso(t.created_at), "what": "scheduled", "why": f"due {_iso(t.due_at)}"})
        if t.status == "fired":
            out.append(base | {"at": _iso(t.fired_at), "what": "fired", "why": t.reason or ""})
        elif t.status != "pending":
            out.append(base | {"at": _iso(t.updated_at), "what": t.status, "why": t.reason or ""})
    return sorted(out, key=lambda j: (j["at"] or "", j["trigger_id"] or 0))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("explain", help="dry run: FHIR resources, events and each rule's decision for input files")
    p.add_argument("files", nargs="+", metavar="FILE[@TIME]",
                   help="HL7v2 (.hl7) or FHIR JSON files, applied in order as one journey; FILE@2026-03-01T09:00 "
                        "sets the clock for that input (no offset: the site's zone), FILE@+2d moves it on "
                        "(triggers due on the way fire)")
    p.add_argument("--json", action="store_true", help="print one JSON object with a list `events`")
    p.add_argument("--mappings", type=Path, default=Path("mappings"))
    p.add_argument("--now", help="simulated clock (ISO 8601), default: now")
    p.add_argument("--horizon-days", type=float, default=0, help="also fire triggers due within this many days")
    p.add_argument("--resources", action="store_true", help="print the full FHIR resources")
    p.set_defaults(func=cmd_explain)
