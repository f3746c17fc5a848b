"""``careloop reprocess``: replay stored events (or failed inbound messages) through the
current rules after a mapping fix, never doubling a trigger (``origin_key``)."""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def cmd_reprocess(args: argparse.Namespace) -> int:
    from ..pipeline.process import Processor
    from ..pipeline.replay import reprocess, requeue_inbound
    from ..storage.schema import open_database
    from .serve import load_rules_or_report, settings_from

    settings = settings_from(args)
    rs = load_rules_or_report(settings.mappings_dir)
    if rs is None:
        return 1
    engine = open_database(settings.database_url)
    since, until = _when(args.since), _when(args.until)
    now = datetime.now(timezone.utc)
    if args.inbound:
        n = requeue_inbound(engine, since=since, until=until, source=args.source)
        done = Processor(engine, lambda: rs).drain()
        print(f"requeued {n} failed/ignored inbound message(s); processed {done}")
    rep = reprocess(engine, rs, now=now, since=since, until=until, source=args.source,
                    rules=set(args.rule) if args.rule else None)
    print(f"replayed {rep.events} event(s) through rule set {rs.version}: {rep.triggers} new trigger(s), "
          f"{rep.cancelled} cancelled by later events; existing triggers untouched")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("reprocess", help="replay stored events through the current rules (never doubles a trigger)")
    p.add_argument("--since", help="events that occurred at or after (ISO 8601)")
    p.add_argument("--until", help="events that occurred before (ISO 8601)")
    p.add_argument("--source", help="only this source")
    p.add_argument("--rule", action="append", help="only this rule id (repeatable)")
    p.add_argument("--inbound", action="store_true", help="first re-run failed/ignored inbound messages with the current mappings")
    p.add_argument("--database-url")
    p.add_argument("--mappings", type=Path, dest="mappings_dir")
    p.set_defaults(func=cmd_reprocess)
