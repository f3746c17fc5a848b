"""``careloop report [GOAL] [--format table|json|csv|measure] [--by rule_version|destination|month|week]``:
what each journey achieved, per goal and experiment period (and breakdown), against its
randomized holdout, with its funnel (see docs/outcomes.md)."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import date

from .serve import add_common, open_data, settings_from


def cmd_report(args: argparse.Namespace) -> int:
    from ..outcomes import report

    engine = open_data(settings_from(args))
    goal_ids = [args.goal] if args.goal else [g for g, _ in report.goals(engine)]
    if args.goal and args.goal not in {g for g, _ in report.goals(engine)}:
        known = ", ".join(g for g, _ in report.goals(engine)) or "none yet"
        print(f"careloop report: no entries for goal '{args.goal}' (goals with entries: {known})", file=sys.stderr)
        return 2
    if args.export:
        return _export(args, engine)
    try:
        by = report.parse_by(args.by)
    except ValueError as exc:
        print(f"careloop report: {exc}", file=sys.stderr)
        return 2
    if by and args.format == "measure":
        print("careloop report: --by does not apply to --format measure (one MeasureReport per period)", file=sys.stderr)
        return 2
    reports = [r for g in goal_ids for r in report.build(engine, g, min_lift=args.min_lift, by=by)]
    if args.format == "json":
        sys.stdout.write(json.dumps(report.as_json(reports), indent=2) + "\n")
    elif args.format == "csv":
        sys.stdout.write(report.as_csv(reports))
    elif args.format == "measure":
        try:
            start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
        except (TypeError, ValueError):
            print("careloop report: --format measure needs --start and --end as YYYY-MM-DD", file=sys.stderr)
            return 2
        bundle = {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": r} for r in report.as_measure_reports(reports, start, end)]}
        sys.stdout.write(json.dumps(bundle, indent=2) + "\n")
    else:
        sys.stdout.write(report.as_text(reports) if reports else "no journey entries with goals yet\n")
    return 0


def _export(args: argparse.Namespace, engine: object) -> int:
    import getpass

    from ..delivery.admin_audit import record
    from ..outcomes.export import ExportRefused, export_csv

    if not args.goal:
        print("careloop report: --export needs a GOAL", file=sys.stderr)
        return 2
    try:
        text, n = export_csv(engine, args.goal, limited_data_set=args.limited_data_set, dua=args.dua)  # type: ignore[arg-type]
    except ExportRefused as exc:
        print(f"careloop report: {exc}", file=sys.stderr)
        return 2
    with open(args.export, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    record(engine, actor=getpass.getuser(), channel="cli",  # type: ignore[arg-type]
           action="outcomes.export_lds" if args.limited_data_set else "outcomes.export", outcome="ok",
           target_kind="goal", target_id=args.goal, reason=args.dua,
           detail={"rows": n, "limited_data_set": bool(args.limited_data_set)})
    print(f"wrote {n} rows to {args.export}" + (" (limited data set, DUA " + args.dua + ")" if args.limited_data_set else
                                                 " (de-identified: per-export ids, years only)"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("report", help="outcomes of journeys against their holdouts (table, JSON, CSV, MeasureReport)")
    p.add_argument("goal", nargs="?", help="one goal id (default: every goal with entries)")
    p.add_argument("--format", choices=["table", "json", "csv", "measure"], default="table")
    p.add_argument("--by", action="append", metavar="DIM", help=(
        "break each period down by rule_version, destination, month or week (the anchor's local month / ISO week); "
        "repeat or give a comma list"))
    p.add_argument("--min-lift", type=float, default=0.05, help="smallest absolute lift worth detecting (power note)")
    p.add_argument("--start", help="MeasureReport period start YYYY-MM-DD")
    p.add_argument("--end", help="MeasureReport period end YYYY-MM-DD")
    p.add_argument("--export", metavar="FILE.csv", help="patient-level outcomes of GOAL (per-export random ids, years only)")
    p.add_argument("--limited-data-set", action="store_true", help="with --export: add dates of service (needs --dua)")
    p.add_argument("--dua", help="the data use agreement's reference, recorded in the admin audit")
    add_common(p)
    p.set_defaults(func=cmd_report)
