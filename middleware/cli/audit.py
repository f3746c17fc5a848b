"""``careloop audit export --patient KEY [--format csv|json] [--destination NAME]``: the disclosure record."""
from __future__ import annotations

import argparse
import json
import sys

from .serve import add_common, settings_from


def cmd_export(args: argparse.Namespace) -> int:
    from ..delivery.audit import disclosures_for, to_csv
    from ..storage.schema import open_database

    engine = open_database(settings_from(args).database_url)
    rows = disclosures_for(engine, args.patient, destination=args.destination)
    text = to_csv(rows) if args.format == "csv" else json.dumps({"patient_key": args.patient, "items": rows}, indent=2) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="the disclosure audit (append-only)")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    pe = asub.add_parser("export", help="every disclosure about one patient")
    pe.add_argument("--patient", required=True, help="patient key (system|value)")
    pe.add_argument("--format", choices=["json", "csv"], default="json")
    pe.add_argument("--destination")
    pe.add_argument("--output", "-o")
    add_common(pe)
    pe.set_defaults(func=cmd_export)
