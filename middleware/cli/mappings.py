"""``careloop mappings validate|schema|reload`` and ``careloop events``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import UserError


def cmd_validate(args: argparse.Namespace) -> int:
    from ..pipeline.explain import validate

    t0 = time.perf_counter()
    rs, diags = validate(args.dir)
    ms = (time.perf_counter() - t0) * 1000
    for d in diags:
        print(d, file=sys.stderr if d.level == "error" else sys.stdout)
    if rs is None:
        n = sum(1 for d in diags if d.level == "error")
        print(f"{n} error(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"ok: {len(rs.rules)} rules, {len(rs.destinations)} destinations, version {rs.version} ({ms:.0f} ms)")
    return 0


def schema_texts() -> dict[str, str]:
    """The published schema files (``docs/schema/``) as they should read now."""
    from ..rules import golden, spec

    return {
        "rules.schema.json": json.dumps(spec.json_schema(), indent=2) + "\n",
        "rules-test.schema.json": json.dumps(golden.json_schema(), indent=2) + "\n",
        "settings.schema.json": json.dumps(spec.settings_schema(), indent=2) + "\n",
    }


def cmd_schema(args: argparse.Namespace) -> int:
    texts = schema_texts()
    if args.write:
        try:
            args.write.mkdir(parents=True, exist_ok=True)
            for name, text in texts.items():
                (args.write / name).write_text(text, encoding="utf-8")
                print(f"wrote {args.write / name}")
        except OSError as exc:
            raise UserError(f"cannot write the schema files into {args.write}: {exc.strerror or exc}") from None
        return 0
    sys.stdout.write(texts["rules-test.schema.json" if args.tests else "rules.schema.json"])
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from ..pipeline.explain import golden
    from ..rules.load import load_ruleset

    rs, diags = load_ruleset(args.dir)
    if rs is None:
        for d in diags:
            if d.level == "error":
                print(d, file=sys.stderr)
        print(f"rules in {args.dir} do not validate; no test run", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    results, tdiags = golden(args.dir, rs, name_filter=args.k)
    for d in tdiags:
        print(d, file=sys.stderr)
    failed = [r for r in results if not r.ok]
    for r in results:
        if r.ok:
            if args.verbose:
                print(f"ok   {r.path}:{r.line}: {r.name}")
                for ln in r.timeline:
                    print("       " + ln)
            continue
        print(f"FAIL {r.path}:{r.line}: {r.name}")
        for f in ([r.error] if r.error else []) + r.failures:
            print("  " + f.replace("\n", "\n  "))
        if r.timeline:
            print("  timeline:")
            for ln in r.timeline:
                print("    " + ln)
    ms = (time.perf_counter() - t0) * 1000
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed ({len(results)} cases, {ms:.0f} ms)")
    return 1 if failed or any(d.level == "error" for d in tdiags) or not results else 0


def cmd_reload(args: argparse.Namespace) -> int:
    import httpx

    from ..settings import get_settings

    s = get_settings()
    headers = {"Authorization": f"Bearer {s.api_token}"} if s.api_token else {}
    if not args.url.startswith(("http://", "https://")):
        raise UserError(f"--url {args.url!r} is not an http(s) URL of a running careloop (e.g. http://127.0.0.1:8080)")
    url = f"{args.url.rstrip('/')}/api/mappings/reload"
    try:
        r = httpx.post(url, headers=headers, timeout=30)
    except httpx.TimeoutException:
        raise UserError(f"careloop at {args.url} did not answer within 30 s") from None
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach careloop at {args.url} ({type(exc).__name__}: {exc}); "
                        "is `careloop serve` running there?") from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", {})
        except ValueError:
            raise UserError(f"{url} answered HTTP {r.status_code}, not careloop's reload answer") from None
        for e in detail.get("errors", []) if isinstance(detail, dict) else [str(detail)]:
            print(e, file=sys.stderr)
        running = detail.get('running_version') if isinstance(detail, dict) else '?'
        print(f"reload refused; still running version {running}", file=sys.stderr)
        return 1
    print(f"reloaded: version {r.json()['version']}")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from ..catalogue import event_types

    for e in event_types():
        print(e)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    m = sub.add_parser("mappings", help="validate, test, reload mapping files")
    msub = m.add_subparsers(dest="mappings_command", metavar="ACTION")
    v = msub.add_parser("validate", help="check every file; errors name file:line:col")
    v.add_argument("dir", nargs="?", type=Path, default=Path("mappings"))
    v.set_defaults(func=cmd_validate)
    sc = msub.add_parser("schema", help="print the JSON Schema of rule files (or --tests: of golden test files)")
    sc.add_argument("--tests", action="store_true", help="the schema of <name>_test.yaml files")
    sc.add_argument("--write", type=Path, metavar="DIR", help="write both schema files into DIR (docs/schema)")
    sc.set_defaults(func=cmd_schema)
    t = msub.add_parser("test", help="run the golden cases (<name>_test.yaml beside the rules)")
    t.add_argument("dir", nargs="?", type=Path, default=Path("mappings"))
    t.add_argument("-k", help="only cases whose name contains this text")
    t.add_argument("-v", "--verbose", action="store_true", help="also list passing cases")
    t.set_defaults(func=cmd_test)
    rl = msub.add_parser("reload", help="ask a running careloop to reload its mappings")
    rl.add_argument("--url", default="http://127.0.0.1:8080")
    rl.set_defaults(func=cmd_reload)
    m.set_defaults(func=lambda a: (m.print_help(), 2)[1])
    e = sub.add_parser("events", help="list the event catalogue")
    e.set_defaults(func=cmd_events)
