"""``careloop explain``: what careloop would do with a message or resource, and why."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


def cmd_explain(args: argparse.Namespace) -> int:
    from ..pipeline.dryrun import DryRun
    from .serve import load_rules_or_report
    from ..storage.tables import EventRow  # noqa: F401

    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"careloop explain: no such file: {missing[0]}", file=sys.stderr)
        return 2
    from ._times import parse_time

    now = parse_time(args.now, "--now") if args.now else datetime.now(timezone.utc)
    rs = load_rules_or_report(args.mappings)
    if rs is None:
        return 1
    dry = DryRun(rs, now)
    out_events: list[dict[str, Any]] = []
    rc = 0
    try:
        for f, data, label in _inputs(args.files):
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
                    "input": f, "type": ev.type, "previous_status": ev.previous_status, "status": ev.status,
                    "resource": ev.resource, "patient_key": ev.patient_key,
                    "rules": [{"rule": d.rule_id, "fired": d.fired, "status": d.status, "reason": d.reason,
                               "due_at": d.due_at.isoformat() if d.due_at else None, "trigger": d.trigger,
                               "payload": d.payload if d.fired else None, "steps": d.steps} for d in decisions],
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
                     "due_at": _iso(t.due_at), "fired_at": _iso(t.fired_at)} for t in rows]
        journey = journey_of(rows)
    finally:
        dry.close()
    if args.json:
        sys.stdout.write(orjson.dumps({"ruleset_version": rs.version, "now": now.isoformat(), "events": out_events,
                                       "timeline": timeline, "journey": journey}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return rc
    for shown in out_events:
        if not shown.get("type"):
            continue
        print(f"\n== {shown['input']}: event {shown['type']} (previous status: {shown.get('previous_status')})")
        res = shown["resource"] or {}
        print(f"   resource {res.get('resourceType')}/{res.get('id')} status={res.get('status')}")
        if args.resources:
            print("   " + orjson.dumps(res, option=orjson.OPT_INDENT_2).decode().replace("\n", "\n   "))
        if not shown["rules"]:
            print("   no rule listens to this event")
        for r in shown["rules"]:
            mark = {"pending": "FIRES", "skipped": "SKIPPED", "suppressed": "SUPPRESSED",
                    "unevaluable": "CANNOT EVALUATE"}.get(r["status"] or "", "no")
            print(f"   [{mark}] {r['rule']}: {r['reason']}")
            for s in r["steps"]:
                print(f"          - {s}")
    if journey:
        print("\n== journey (simulated clock)")
        for j in journey:
            print(f"   {j['at']}  {j['what']:<10} #{j['trigger_id']} {j['rule']}: {j['why']}")
    return rc


def _inputs(files: list[str]) -> list[tuple[str, bytes, str]]:
    """(shown name, bytes, label) per input; an HL7 batch file gives one per message (``file#n``)."""
    from ..normalize.hl7_batch import is_batch, split_batch

    out: list[tuple[str, bytes, str]] = []
    for f in files:
        data = Path(f).read_bytes()
        if not is_batch(data):
            out.append((f, data, Path(f).name))
            continue
        batch = split_batch(data)
        messages = [m for part in batch.parts for m in part.messages]
        for note in batch.problems:
            print(f"{f}: batch: {note}", file=sys.stderr)
        out += [(f"{f}#{n}", m, f"{Path(f).name}#{n}") for n, m in enumerate(messages, start=1)]
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
    p.add_argument("files", nargs="+", help="HL7v2 (.hl7) or FHIR JSON files, applied in order as one journey")
    p.add_argument("--json", action="store_true", help="print one JSON object with a list `events`")
    p.add_argument("--mappings", type=Path, default=Path("mappings"))
    p.add_argument("--now", help="simulated clock (ISO 8601), default: now")
    p.add_argument("--horizon-days", type=float, default=0, help="also fire triggers due within this many days")
    p.add_argument("--resources", action="store_true", help="print the full FHIR resources")
    p.set_defaults(func=cmd_explain)
