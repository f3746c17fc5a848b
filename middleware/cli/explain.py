"""``careloop explain``: what careloop would do with a message or resource, and why.

The dry run itself is :mod:`middleware.pipeline.explain` (the console's playground runs the same)."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson


def _site_time(text: str, flag: str, zone: ZoneInfo) -> datetime:
    """An ISO time (or a relative one such as ``-2d``); written without an offset, it is read in the site's zone."""
    from ._times import parse_time

    at = parse_time(text, flag)
    try:
        naive = datetime.fromisoformat(text.strip()).tzinfo is None
    except ValueError:
        naive = False
    return at.replace(tzinfo=zone) if naive else at


def cmd_explain(args: argparse.Namespace) -> int:
    from ..rules.journeys import format_timeline
    from .serve import load_rules_or_report

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
    from ..pipeline.explain import ClockBackwards, Input, explain, split_inputs

    inputs: list[Input] = []
    for f, when in specs:
        got, problems = split_inputs(f, Path(f).read_bytes(), when)
        for note in problems:
            print(f"{f}: batch: {note}", file=sys.stderr)
        inputs += got
    try:
        out = explain(rs, inputs, now, horizon_days=args.horizon_days)
    except ClockBackwards as exc:
        print(f"careloop explain: {exc}", file=sys.stderr)
        return 2
    notes = out.pop("notes")
    out_events, journey, journeys = out["events"], out["journey"], out["journeys"]
    rc = 0
    for shown in out_events:
        if not shown.get("error"):
            continue
        rc = 1
        if shown["error"] == "unreadable input":
            print(f"{shown['input']}: error: neither an HL7 v2 message or batch nor FHIR JSON", file=sys.stderr)
        elif not args.json:
            print(f"{shown['input']}: error: {shown['error']}")
    if not args.json:
        for f, note in notes:
            print(f"{f}: {note}")
    if args.json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
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
