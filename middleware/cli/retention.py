"""``careloop retention run [--days N]``: purge raw messages and payload bodies (the audit is kept)."""
from __future__ import annotations

import argparse
import json
import time

from .serve import add_common, open_data, settings_from


def cmd_run(args: argparse.Namespace) -> int:
    from ..delivery.retention import purge
    settings = settings_from(args)
    engine = open_data(settings)
    from ..delivery.admin_audit import cli_actor, record

    days = args.days or settings.retention_days
    report = purge(engine, now=time.time(), days=days, full=args.full)
    record(engine, actor=cli_actor(), channel="cli", action="retention.run", target_kind="retention", target_id=f"{days}d",
           reason=args.reason, detail={**report.as_dict(), "full": args.full})
    print(json.dumps(report.as_dict()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("retention", help="data retention")
    rsub = p.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    pr = rsub.add_parser("run", help="purge bodies older than retention_days [CARELOOP_RETENTION_DAYS]")
    pr.add_argument("--days", type=int, help="override retention_days")
    pr.add_argument("--full", action="store_true",
                    help="cover all history, not only the window since the last run's cut-off")
    pr.add_argument("--reason", help="why (kept in the admin audit; no PHI)")
    add_common(pr)
    pr.set_defaults(func=cmd_run)
