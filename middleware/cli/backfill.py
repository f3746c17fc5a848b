"""``careloop backfill --source NAME [--types ...]``: load current FHIR state without triggers."""
from __future__ import annotations

import argparse
import sys

from .serve import add_common, load_rules_or_report, open_data, settings_from


def cmd_backfill(args: argparse.Namespace) -> int:
    from ..pipeline.backfill import backfill
    from ..listeners.fhir_fetch import FetchError, FhirFetcher
    settings = settings_from(args)
    rs = load_rules_or_report(settings.mappings_dir)
    if rs is None:
        return 1
    source = rs.sources.get(args.source)
    if source is None:
        print(f"careloop backfill: unknown source {args.source!r}", file=sys.stderr)
        return 2
    fetcher = FhirFetcher.for_source(source, timeout_s=settings.fhir_request_timeout_s)
    if fetcher is None:
        print(f"careloop backfill: source {source.name} has no fhir.base_url", file=sys.stderr)
        return 2
    engine = open_data(settings)
    try:
        rep = backfill(engine, rs, source, fetcher, args.types, use_export=False if args.no_export else None, page=args.page,
                       deadline_s=settings.fhir_backfill_timeout_s)
    except FetchError as exc:
        print(f"careloop backfill: {exc}", file=sys.stderr)
        return 1
    per = ", ".join(f"{k} {v}" for k, v in sorted(rep.per_type.items())) or "nothing"
    print(f"backfill {source.name} via {rep.method}: {rep.resources} resources ({per}), {rep.patients} patients, "
          f"{rep.events} events, {rep.triggers} triggers, {rep.seconds:.1f} s = {rep.rate:.0f} resources/s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("backfill", help="load the current state of a FHIR source (no transition triggers)")
    p.add_argument("--source", required=True)
    p.add_argument("--types", nargs="+", help="resource types (default: the source's resource_types)")
    p.add_argument("--no-export", action="store_true", help="search even if the server offers Bulk $export")
    p.add_argument("--page", type=int, default=500, help="search page size (one transaction per page)")
    add_common(p)
    p.set_defaults(func=cmd_backfill)
