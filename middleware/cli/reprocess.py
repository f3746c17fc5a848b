"""``careloop reprocess``: replay stored events (or failed inbound messages) through the
current rules after a mapping fix, never doubling a trigger (``origin_key``).

A preview by default: the replay runs in a transaction that is rolled back, and the command
lists what it would create, move and cancel, and what would be sent at once (rule, pseudonymous
contact key, originating event, planned time, destinations; never PHI). ``--apply`` does it.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from . import UserError
from ._times import parse_time
from .serve import add_common, load_rules_or_report, open_data, settings_from


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="minutes").replace("+00:00", "Z") if ts else "-"


def check_rules(wanted: list[str] | None, known: list[str]) -> set[str] | None:
    """The ``--rule`` ids, each known; :class:`UserError` with a did-you-mean otherwise."""
    if not wanted:
        return None
    import difflib

    for rid in wanted:
        if rid not in known:
            close = difflib.get_close_matches(rid, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known rules: {', '.join(sorted(known)[:8])}" + (
                ", ..." if len(known) > 8 else "")
            raise UserError(f"--rule {rid!r} is not a rule in the loaded mappings{hint}")
    return set(wanted)


def _condition_resolver(rs: Any, timeout_s: float) -> Any:
    """CarePlan ``%conditions`` read from each source's FHIR server (outbound policy applies)."""
    from ..listeners.fhir_fetch import FhirFetcher
    from ..normalize.fhir import to_r4
    from ..pipeline.conditions import ConditionResolver

    fetchers: dict[str, Any] = {}

    def fetcher_for(name: str) -> Any:
        src = rs.sources.get(name)
        if src is None:
            return None
        if name not in fetchers:
            fetchers[name] = FhirFetcher.for_source(src, timeout_s=timeout_s)
        return fetchers[name]

    return ConditionResolver(fetcher_for, convert=to_r4, ttl_s=86_400.0)  # one replay reads each Condition once


def cmd_reprocess(args: argparse.Namespace) -> int:
    from ..config.policy import contact_key
    from ..keyring import contact_keyring
    from ..pipeline.process import Processor
    from ..pipeline.replay import count_events, count_inbound_to_requeue, reprocess, requeue_inbound

    now = datetime.now(timezone.utc)
    since = parse_time(args.since, "--since", now) if args.since else None
    until = parse_time(args.until, "--until", now) if args.until else None
    if since and until and until <= since:
        raise UserError(f"--until ({until.isoformat()}) is not after --since ({since.isoformat()})")
    settings = settings_from(args)
    rs = load_rules_or_report(settings.mappings_dir)
    if rs is None:
        return 1
    only = check_rules(args.rule, [cr.id for cr in rs.rules])
    if args.source and args.source not in rs.sources.by_name:
        import difflib

        close = difflib.get_close_matches(args.source, list(rs.sources.by_name), n=1)
        raise UserError(f"--source {args.source!r} is not a source in the loaded mappings"
                        + (f"; did you mean {close[0]!r}?" if close else ""))
    engine = open_data(settings)
    if not count_events(engine) and not (args.inbound and count_inbound_to_requeue(engine)):
        from ..storage.schema import POINT_AT, shown_url

        raise UserError(f"{shown_url(settings.database_url)} holds no stored events to replay: "
                        f"is it the right database? {POINT_AT}", code=1)
    secret = contact_keyring(settings).current.secret
    out: dict[str, Any] = {"applied": bool(args.apply), "ruleset_version": rs.version}
    if args.inbound:
        if args.apply:
            n = requeue_inbound(engine, since=since, until=until, source=args.source)
            done = Processor(engine, lambda: rs).drain()
            out["inbound"] = {"requeued": n, "processed": done}
            if not args.json:
                print(f"requeued {n} failed/ignored inbound message(s); processed {done}")
        else:
            n = count_inbound_to_requeue(engine, since=since, until=until, source=args.source)
            out["inbound"] = {"would_requeue": n}
            if not args.json:
                print(f"would re-run {n} failed/ignored inbound message(s) with the current mappings "
                      "(what they make shows only with --apply)")
    rep = reprocess(engine, rs, now=now, since=since, until=until, source=args.source, rules=only, apply=args.apply,
                    conditions=_condition_resolver(rs, settings.fhir_request_timeout_s))
    items: list[dict[str, Any]] = [
        {"action": p.what, "rule": p.rule_id, "contact_key": contact_key(secret, p.patient_key) if p.patient_key else None,
         "trigger_id": p.trigger_id, "event_id": p.event_id, "due_at": _iso(p.due_at), "status": p.status,
         "sends_now": p.sends_now, "destinations": p.destinations} for p in rep.planned]
    created = [p for p in rep.planned if p.what == "create"]
    counts = {"events": rep.events, "create": len(created),
              "create_pending": sum(1 for p in created if p.status == "pending"),
              "create_not_pending": sum(1 for p in created if p.status != "pending"),
              "move": rep.count("move"), "cancel": rep.count("cancel"),
              "send_now": sum(1 for p in rep.planned if p.sends_now)}
    out |= {"counts": counts, "triggers": items}
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    verb = ("" if args.apply else "would ")
    head = ("applied" if args.apply else "PREVIEW (nothing written, nothing sent; add --apply to do it)")
    print(f"{head}: {rep.events} event(s) replayed through rule set {rs.version}")
    print(f"  {verb}create {counts['create']} trigger(s) ({counts['create_pending']} pending, "
          f"{counts['create_not_pending']} skipped/suppressed/cancelled), {verb}move {counts['move']}, "
          f"{verb}cancel {counts['cancel']} existing; {counts['send_now']} {'are' if args.apply else 'would be'} "
          "due now (sent at once by a running worker)")
    for it in items:
        when = "NOW" if it["sends_now"] else it["due_at"]
        print(f"  {it['action']:<6} {it['rule']:<32} {it['contact_key'] or '-':<20} "
              f"{'trigger ' + str(it['trigger_id']) if it['trigger_id'] else 'event ' + str(it['event_id']):<14} "
              f"{it['status']:<10} due {when:<17} -> {','.join(it['destinations']) or '-'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("reprocess", help="replay stored events through the current rules (preview; --apply does it)")
    p.add_argument("--since", help="events that occurred at or after: ISO date/date-time (UTC without offset) or a time ago: 2d, 12h")
    p.add_argument("--until", help="events that occurred before (same forms)")
    p.add_argument("--source", help="only this source")
    p.add_argument("--rule", action="append", help="only this rule id (repeatable)")
    p.add_argument("--inbound", action="store_true", help="first re-run failed/ignored inbound messages with the current mappings")
    p.add_argument("--apply", action="store_true", help="write the triggers (the default only previews: nothing written or sent)")
    p.add_argument("--json", action="store_true", help="one JSON object: counts and the per-trigger list")
    add_common(p)
    p.set_defaults(func=cmd_reprocess)
