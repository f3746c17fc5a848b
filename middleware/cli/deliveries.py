"""``careloop deliveries``: list, replay (one, a filter, a destination), resume, alerts, and run a worker.

    careloop deliveries list [--status dead] [--destination NAME]
    careloop deliveries replay --id 42 | --destination NAME | --status dead [--rule ID] [--reason TEXT]
    careloop deliveries resume NAME          # after fixing a refused key or a 410
    careloop deliveries alerts
    careloop deliveries run [--until-idle] [--lease-s 120]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .serve import add_common, load_rules_or_report, open_data, settings_from


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    settings = settings_from(args)
    engine = open_data(settings)
    return settings, engine


def _audit(engine: object, action: str, kind: str, target: object, *, reason: str | None, detail: dict) -> None:  # type: ignore[type-arg]
    """Write the admin-audit row of a CLI action (actor: the OS user)."""
    from ..delivery.admin_audit import cli_actor, record

    record(engine, actor=cli_actor(), channel="cli", action=action, target_kind=kind,  # type: ignore[arg-type]
           target_id=None if target is None else str(target), reason=reason,
           detail={k: v for k, v in detail.items() if v is not None})


def cmd_list(args: argparse.Namespace) -> int:
    from ..delivery.admin import list_deliveries

    _, engine = _engine(args)
    rows = list_deliveries(engine, status=args.status, destination=args.destination, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':>6} {'kind':<5} {'status':<22} {'destination':<16} {'rule':<28} {'att':>3}  last error")
    for r in rows:
        status = r["status"] + (f"/{r['confirmation']}" if r.get("confirmation") else "")  # e.g. delivered/unconfirmed
        print(f"{r['id']:>6} {r['kind']:<5} {status:<22} {r['destination']:<16} {str(r['rule_id'])[:28]:<28} "
              f"{r['attempts']:>3}  {(r['last_error'] or '')[:80]}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from ..delivery.admin import replay

    if args.id is None and not args.destination and not args.all and not (args.rule or args.reason):
        print("careloop deliveries replay: give --id, --destination, --rule/--reason, or --all (every delivery in --status)",
              file=sys.stderr)
        return 2
    _, engine = _engine(args)
    try:
        n = replay(engine, delivery_id=args.id, destination=args.destination, status=args.status,
                   rule_id=args.rule, reason_contains=args.reason)
    except ValueError as exc:
        print(f"careloop deliveries replay: {exc}", file=sys.stderr)
        return 2
    _audit(engine, "deliveries.replay", *(("delivery", args.id) if args.id is not None else ("destination", args.destination)),
           reason=args.audit_reason, detail={"status": args.status, "rule_id": args.rule, "replayed": n})
    print(f"replayed {n} deliver{'y' if n == 1 else 'ies'} (status {args.status} -> pending)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from ..delivery.admin import resume

    _, engine = _engine(args)
    lifted = resume(engine, args.name)
    _audit(engine, "destination.resume", "destination", args.name, reason=args.audit_reason, detail={"resumed": bool(lifted)})
    print(f"{args.name}: {'resumed' if lifted else 'was not paused'}")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from ..delivery.admin import alerts, paused_destinations

    _, engine = _engine(args)
    print(json.dumps({"alerts": alerts(engine, open_only=not args.all), "paused": paused_destinations(engine)}, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """A delivery worker process (no HTTP, no MLLP): claims, sends, records until stopped or idle."""
    from .. import logsafe
    from ..delivery.audit import guard_append_only
    from ..delivery.worker import DeliveryWorker
    from ..service import fault_hook_from_env

    settings, engine = _engine(args)
    logsafe.configure(settings.log_level)
    rs = load_rules_or_report(settings.mappings_dir)
    if rs is None:
        return 1
    guard_append_only()
    from ..keyring import contact_keyring

    worker = DeliveryWorker(engine, lambda: rs, contact_secret=contact_keyring(settings).current.secret, fault_hook=fault_hook_from_env(),
                            lease_s=args.lease_s, link_base=f"http://{settings.http_host}:{settings.http_port}")

    async def loop() -> None:
        try:
            idle = 0
            while True:
                n = await worker.run_once()
                idle = 0 if n else idle + 1
                if args.until_idle and idle >= 2:
                    return
                if not n:
                    await asyncio.sleep(settings.worker_poll_interval_s)
        finally:
            await worker.aclose()

    try:
        asyncio.run(loop())
    except KeyboardInterrupt:
        pass
    print(f"delivered {worker.sent}", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("deliveries", help="list, replay and run deliveries; resume paused destinations")
    dsub = p.add_subparsers(dest="deliveries_command", metavar="ACTION", required=True)
    pl = dsub.add_parser("list", help="deliveries, newest first (ids, statuses and reasons; no payloads)")
    pl.add_argument("--status")
    pl.add_argument("--destination")
    pl.add_argument("--limit", type=int, default=50)
    pl.add_argument("--json", action="store_true")
    add_common(pl)
    pl.set_defaults(func=cmd_list)
    pr = dsub.add_parser("replay", help="put dead (or unconfirmed/suppressed) deliveries back to pending")
    pr.add_argument("--id", type=int, help="one delivery")
    pr.add_argument("--destination", help="every matching delivery of a destination (also lifts its pause)")
    pr.add_argument("--status", default="dead", choices=["dead", "unconfirmed", "suppressed"])
    pr.add_argument("--rule", help="only deliveries of triggers from this rule id")
    pr.add_argument("--reason", help="only deliveries whose last error contains this text")
    pr.add_argument("--all", action="store_true", help="every delivery with --status")
    pr.add_argument("--audit-reason", help="why (kept in the admin audit; no PHI)")
    add_common(pr)
    pr.set_defaults(func=cmd_replay)
    pu = dsub.add_parser("resume", help="lift an auth-failure pause or 410 disable of a destination")
    pu.add_argument("name")
    pu.add_argument("--audit-reason", help="why (kept in the admin audit; no PHI)")
    add_common(pu)
    pu.set_defaults(func=cmd_resume)
    pa = dsub.add_parser("alerts", help="open delivery alerts and paused destinations")
    pa.add_argument("--all", action="store_true")
    add_common(pa)
    pa.set_defaults(func=cmd_alerts)
    pw = dsub.add_parser("run", help="run a delivery worker (no HTTP/MLLP)")
    pw.add_argument("--until-idle", action="store_true", help="exit when nothing is due")
    pw.add_argument("--lease-s", type=float, default=120.0, help="how long a claimed delivery stays leased")
    add_common(pw)
    pw.set_defaults(func=cmd_run)
