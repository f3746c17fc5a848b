"""``careloop audit export --patient KEY [--format csv|json] [--destination NAME]``: the disclosure record.
``careloop audit admin [--since WHEN] [--action A] [--actor NAME] [--json]``: the admin audit."""
from __future__ import annotations

import argparse
import json
import sys

from . import UserError
from .serve import add_common, open_data, settings_from


def cmd_export(args: argparse.Namespace) -> int:
    from ..delivery.audit import disclosures_for, to_csv
    engine = open_data(settings_from(args))
    rows = disclosures_for(engine, args.patient, destination=args.destination)
    text = to_csv(rows) if args.format == "csv" else json.dumps({"patient_key": args.patient, "items": rows}, indent=2) + "\n"
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise UserError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(text)
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from ..delivery.admin_audit import parse_since, query

    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"careloop audit admin: {exc}", file=sys.stderr)
        return 2
    engine = open_data(settings_from(args))
    rows, next_before = query(engine, action=args.action, actor=args.actor, since=since, before_id=args.before_id,
                              limit=args.limit)
    if args.json:
        sys.stdout.write(json.dumps({"items": rows, "next_before_id": next_before}, indent=2) + "\n")
        return 0
    for r in rows:
        target = f"{r['target_kind']}:{r['target_id']}" if r["target_kind"] else "-"
        print(f"{r['id']:>6} {r['at'][:19]} {r['actor'][:16]:<16} {r['channel']:<7} {r['action']:<22} "
              f"{r['outcome']:<8} {target}" + (f"  ({r['reason']})" if r["reason"] else ""))
    if next_before:
        print(f"... more: --before-id {next_before}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="the disclosure audit and the admin audit (append-only)")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    pe = asub.add_parser("export", help="every disclosure about one patient")
    pe.add_argument("--patient", required=True, help="patient key (system|value)")
    pe.add_argument("--format", choices=["json", "csv"], default="json")
    pe.add_argument("--destination")
    pe.add_argument("--output", "-o")
    add_common(pe)
    pe.set_defaults(func=cmd_export)
    pa = asub.add_parser("admin", help="the admin audit: who did what, newest first")
    pa.add_argument("--since", help="ISO 8601 date/time (UTC if no offset) or epoch seconds")
    pa.add_argument("--action", help="e.g. deliveries.replay, suppression.add, contact_keys.export")
    pa.add_argument("--actor", help="API token name or OS user")
    pa.add_argument("--limit", type=int, default=100)
    pa.add_argument("--before-id", type=int, help="page: rows older than this id")
    pa.add_argument("--json", action="store_true")
    add_common(pa)
    pa.set_defaults(func=cmd_admin)
