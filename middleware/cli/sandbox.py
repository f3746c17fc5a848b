"""``careloop sandbox up|down|status|seed|scenario``: the HAPI FHIR sandbox, one command each.

State lives in ``.careloop/sandbox/`` (HAPI's pid/log, the notification token, the sandbox
careloop database). ``seed`` and ``scenario`` agree on careloop's URL (``--careloop-url``,
default ``http://127.0.0.1:8080``): ``seed`` points the Subscriptions there, ``scenario``
uses a careloop already answering there, or starts one itself on that port (in-process,
SQLite in the state directory, demo mappings with waits in seconds, a local webhook sink).
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

STATE = Path(".careloop/sandbox")
DEFAULT_CARELOOP = "http://127.0.0.1:8080"
START_DEADLINE_S = 420.0  # first start may build the launcher (cold Maven cache); start-up ~25 s


def _token() -> str:
    """The notification token HAPI sends to careloop: env, else one generated once and kept (0600)."""
    from ..sandbox.local import TOKEN_ENV

    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = STATE / "fhir-token"
    if path.exists():
        return path.read_text().strip()
    STATE.mkdir(parents=True, exist_ok=True)
    tok = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(tok + "\n")
    return tok


def _db_url(args: argparse.Namespace) -> str:
    return args.database_url or f"sqlite:///{(STATE / 'careloop.db').resolve()}"


def _fhir_base(args: argparse.Namespace) -> str:
    from ..sandbox import hapi

    if args.fhir_url:
        return str(args.fhir_url).rstrip("/")
    st = hapi.status(STATE)
    return st.base_url or hapi.base_url_for(hapi.DEFAULT_PORT)


def cmd_up(args: argparse.Namespace) -> int:
    from ..sandbox import hapi

    runtime = args.runtime or hapi.detect_runtime()
    if runtime is None:
        print("careloop sandbox: need a running Docker engine, or Java 17+ and Maven (mvn)", file=sys.stderr)
        return 2
    print(f"starting the HAPI FHIR sandbox ({runtime}; first run builds the launcher)…", flush=True)
    try:
        h = hapi.start(port=args.port, workdir=STATE, runtime=runtime, deadline_s=args.deadline)
    except hapi.SandboxError as exc:
        print(f"careloop sandbox: {exc}", file=sys.stderr)
        return 1
    how = "already running" if h.reused else f"ready in {h.started_in_s:.1f}s"
    print(f"HAPI FHIR sandbox {how}: {h.base_url}" + (f"  (pid {h.pid}, log {h.log_path})" if h.pid else ""))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ..sandbox import hapi

    stopped = hapi.stop(STATE)
    print("HAPI FHIR sandbox stopped" if stopped else "no sandbox recorded as running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..sandbox import hapi

    st = hapi.status(STATE)
    print(f"state={st.state} url={st.base_url or '-'} runtime={st.runtime or '-'} pid={st.pid or '-'} "
          f"healthy={'yes' if st.healthy else 'no'}" + (f" log={st.log_path}" if st.log_path else ""))
    return 0 if st.state == "running" else 3


def cmd_seed(args: argparse.Namespace) -> int:
    import httpx

    from ..sandbox import hooks, seed
    from ..sandbox.backfill import backfill

    base = _fhir_base(args)
    resources = seed.generate(args.patients, seed=args.seed)
    try:
        resp = seed.post_bundle(base, seed.as_transaction_bundle(resources))
    except httpx.HTTPError as exc:
        print(f"careloop sandbox seed: could not load data into {base}: {exc} (is `careloop sandbox up` done?)",
              file=sys.stderr)
        return 1
    print(f"seeded {len(resources)} synthetic resources ({len(resp.get('entry', []))} entries) into {base}")
    counts = backfill(_db_url(args), base, mappings=args.mappings)
    print(f"backfilled careloop ({_db_url(args).split('@')[-1]}) without firing: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()))
    endpoint = args.careloop_url.rstrip("/") + "/fhir/default"
    with httpx.Client(base_url=base + "/", timeout=30) as client:
        ids = hooks.apply(client, hooks.sandbox_set(endpoint, _token()))
    print(f"subscriptions active on HAPI -> {endpoint}: {', '.join(ids)} "
          f"(token in {os.environ.get('CARELOOP_FHIR_TOKEN_DEFAULT') and '$CARELOOP_FHIR_TOKEN_DEFAULT' or STATE / 'fhir-token'})")
    return 0


def cmd_scenario(args: argparse.Namespace) -> int:
    from ..sandbox import journeys
    from ..sandbox.scenario_cli import run_scenarios

    names = list(journeys.SCENARIOS) if args.name == "all" else [args.name]
    try:
        names = [journeys.canonical(n) for n in names]
    except KeyError:
        print(f"unknown scenario {args.name!r}; one of: {', '.join(journeys.SCENARIOS)}, all", file=sys.stderr)
        return 2
    port = urlparse(args.careloop_url).port or 80
    return run_scenarios(names, fhir_base=_fhir_base(args), careloop_url=args.careloop_url.rstrip("/"),
                         port=port, token=_token(), database_url=_db_url(args), api_token=args.api_token,
                         sink_url=args.sink_url, workdir=Path(tempfile.mkdtemp(prefix="careloop-scenario-")),
                         step_deadline_s=args.step_deadline)


def register(sub: Any) -> None:
    from ..sandbox.journeys import SCENARIOS

    p = sub.add_parser("sandbox", help="the HAPI FHIR sandbox: up, down, status, seed, scenario")
    s = p.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)

    up = s.add_parser("up", help="start HAPI (Docker if an engine runs, else Java 17 + Maven); print the base URL")
    up.add_argument("--port", type=int, default=int(os.environ.get("CARELOOP_SANDBOX_PORT", "8090")))
    up.add_argument("--runtime", choices=["java", "docker"], default=os.environ.get("CARELOOP_SANDBOX_RUNTIME"))
    up.add_argument("--deadline", type=float, default=START_DEADLINE_S, help="seconds to wait for /fhir/metadata")
    up.set_defaults(func=cmd_up)
    s.add_parser("down", help="stop the sandbox").set_defaults(func=cmd_down)
    s.add_parser("status", help="is the sandbox running?").set_defaults(func=cmd_status)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--fhir-url", help="FHIR base (default: the running sandbox)")
        q.add_argument("--careloop-url", default=os.environ.get("CARELOOP_SANDBOX_CARELOOP_URL", DEFAULT_CARELOOP),
                       help="careloop that HAPI notifies (default %(default)s)")
        q.add_argument("--database-url", help="careloop database for the sandbox (default .careloop/sandbox/careloop.db)")

    sd = s.add_parser("seed", help="load synthetic data, backfill careloop (nothing fires), subscribe careloop")
    sd.add_argument("--patients", type=int, default=20)
    sd.add_argument("--seed", type=int, default=42)
    sd.add_argument("--mappings", type=Path, default=Path("mappings"))
    common(sd)
    sd.set_defaults(func=cmd_seed)

    sc = s.add_parser("scenario", help="run a journey on HAPI and show what careloop did",
                      description="scenarios: " + "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()) + "; all")
    sc.add_argument("name", help=", ".join(SCENARIOS) + ", or all")
    sc.add_argument("--api-token", default=os.environ.get("CARELOOP_API_TOKEN"),
                    help="operator API token of a running careloop")
    sc.add_argument("--sink-url", help="a running `careloop sink` to read (GET /received), with --careloop-url")
    sc.add_argument("--step-deadline", type=float, default=60.0, help="seconds each step may take")
    common(sc)
    sc.set_defaults(func=cmd_scenario)
