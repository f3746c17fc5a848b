"""``careloop mappings validate|schema|reload`` and ``careloop events``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def cmd_validate(args: argparse.Namespace) -> int:
    from ..rules.load import load_ruleset

    t0 = time.perf_counter()
    rs, diags = load_ruleset(args.dir)
    ms = (time.perf_counter() - t0) * 1000
    for d in diags:
        print(d, file=sys.stderr if d.level == "error" else sys.stdout)
    if rs is None:
        n = sum(1 for d in diags if d.level == "error")
        print(f"{n} error(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"ok: {len(rs.rules)} rules, {len(rs.destinations)} destinations, version {rs.version} ({ms:.0f} ms)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from ..rules.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    import httpx

    from ..settings import get_settings

    s = get_settings()
    headers = {"Authorization": f"Bearer {s.api_token}"} if s.api_token else {}
    r = httpx.post(f"{args.url.rstrip('/')}/api/mappings/reload", headers=headers, timeout=30)
    if r.status_code != 200:
        detail = r.json().get("detail", {})
        for e in detail.get("errors", []) if isinstance(detail, dict) else [str(detail)]:
            print(e, file=sys.stderr)
        print(f"reload refused; still running version {detail.get('running_version') if isinstance(detail, dict) else '?'}", file=sys.stderr)
        return 1
    print(f"reloaded: version {r.json()['version']}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from ..normalize.catalogue import event_types

    for e in event_types():
        print(e)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    m = sub.add_parser("mappings", help="validate, test, reload mapping files")
    msub = m.add_subparsers(dest="mappings_command", metavar="ACTION")
    v = msub.add_parser("validate", help="check every file; errors name file:line:col")
    v.add_argument("dir", nargs="?", type=Path, default=Path("mappings"))
    v.set_defaults(func=cmd_validate)
    sc = msub.add_parser("schema", help="print the JSON Schema of rule files")
    sc.set_defaults(func=cmd_schema)
    rl = msub.add_parser("reload", help="ask a running careloop to reload its mappings")
    rl.add_argument("--url", default="http://127.0.0.1:8080")
    rl.set_defaults(func=cmd_reload)
    m.set_defaults(func=lambda a: (m.print_help(), 2)[1])
    e = sub.add_parser("events", help="list the event catalogue")
    e.set_defaults(func=cmd_events)
