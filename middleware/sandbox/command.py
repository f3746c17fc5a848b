"""``careloop sandbox up|down|status|seed|scenario``: the HAPI FHIR sandbox, one command each.

State lives in ``.careloop/sandbox/`` (HAPI's pid/log/run id, the notification token, the
sandbox careloop database). ``seed`` and ``scenario`` talk only to the sandbox that ``up``
started from this directory (alive, ours, answering), or to ``--fhir-url`` when given; with
neither they refuse. They agree on careloop's URL (``--careloop-url``, default
``http://127.0.0.1:8080``): ``seed`` points the Subscriptions there, ``scenario`` uses a
careloop already answering there, or starts one itself on that port (in-process, SQLite in
the state directory, demo mappings with waits in seconds, a local webhook sink). A new
sandbox run is a new server: see :mod:`middleware.sandbox.server_state` for what happens to
the database of the previous one.
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
    from .local import TOKEN_ENV

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


class Refusal(Exception):
    """A user error: one line on stderr, exit 1."""


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(FHIR base, server identity): ``--fhir-url``, else the sandbox ``up`` started here.

    Raises :class:`Refusal` when no sandbox of ours is running: never a default URL, which
    may be somebody else's FHIR server.
    """
    from . import hapi, server_state

    if args.fhir_url:
        base = str(args.fhir_url).rstrip("/")
        return base, server_state.identity(None, base)
    h = hapi.running(STATE)
    if h is None:
        st = hapi.status(STATE)
        why = ("nothing recorded" if st.state == "stopped" else
               "the recorded one has no run id: `careloop sandbox down`, then `up`" if st.run_id is None else
               f"the recorded one is {st.state}")
        raise Refusal(f"no sandbox of ours is running in {STATE} ({why}); run `careloop sandbox up`, "
                      "or pass --fhir-url to use another FHIR server")
    return h.base_url, server_state.identity(h.run_id, h.base_url)


def _claim_database(args: argparse.Namespace, ident: str) -> None:
    from . import server_state

    try:
        note = server_state.claim(_db_url(args), ident, own_database=not args.database_url)
    except server_state.ServerMismatch as exc:
        raise Refusal(str(exc)) from exc
    if note:
        print(note)


def cmd_up(args: argparse.Namespace) -> int:
    from . import hapi

    runtime = args.runtime or hapi.detect_runtime()
    if runtime is None:
        print("careloop sandbox: need a running Docker engine, or Java 17+ and Maven (mvn)", file=sys.stderr)
        return 2
    print(f"starting the HAPI FHIR sandbox ({runtime}; first run builds the launcher)…", flush=True)
    try:
        h = hapi.start(port=args.port, workdir=STATE, runtime=runtime, deadline_s=args.deadline, bind=args.bind)
    except hapi.SandboxError as exc:
        print(f"careloop sandbox: {exc}", file=sys.stderr)
        return 1
    how = "already running" if h.reused else f"ready in {h.started_in_s:.1f}s"
    print(f"HAPI FHIR sandbox {how}: {h.base_url}" + (f"  (pid {h.pid}, log {h.log_path})" if h.pid else ""))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from . import hapi

    stopped = hapi.stop(STATE)
    print("HAPI FHIR sandbox stopped" if stopped else "no sandbox recorded as running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from . import hapi

    st = hapi.status(STATE)
    print(f"state={st.state} url={st.base_url or '-'} runtime={st.runtime or '-'} pid={st.pid or '-'} "
          f"healthy={'yes' if st.healthy else 'no'}" + (f" log={st.log_path}" if st.log_path else ""))
    return 0 if st.state == "running" else 3


def cmd_seed(args: argparse.Namespace) -> int:
    try:
        return _seed(args)
    except Refusal as exc:
        print(f"careloop sandbox seed: {exc}", file=sys.stderr)
        return 1


def _seed(args: argparse.Namespace) -> int:
    import httpx

    from ..listeners.fhir_fetch import FetchError
    from . import hooks, seed

    base, ident = _target(args)
    settings = _settings(args)
    _claim_database(args, ident)
    resources = seed.generate(args.patients, seed=args.seed)
    try:
        resp = seed.post_bundle(base, seed.as_transaction_bundle(resources), timeout_s=settings.fhir_request_timeout_s * 12)
    except httpx.TimeoutException:
        raise Refusal(f"timed out after {settings.fhir_request_timeout_s * 12:g} s waiting for {base} "
                      "to answer the seed transaction") from None
    except httpx.HTTPError as exc:
        raise Refusal(f"could not load data into {base}: {type(exc).__name__}: {exc}") from None
    print(f"seeded {len(resources)} synthetic resources ({len(resp.get('entry', []))} entries) into {base}", flush=True)
    try:
        rep = _backfill(args, base, settings)
    except FetchError as exc:
        raise Refusal(f"backfill failed: {exc}") from None
    per = ", ".join(f"{k} {v}" for k, v in sorted(rep.per_type.items())) or "nothing"
    print(f"backfilled careloop ({_db_url(args).split('@')[-1]}) without firing: {rep.resources} resources ({per}), "
          f"{rep.patients} patients, {rep.events} events", flush=True)
    endpoint = args.careloop_url.rstrip("/") + "/fhir/default"
    wait = settings.subscription_activation_timeout_s
    try:
        with httpx.Client(base_url=base + "/", timeout=min(30.0, wait)) as client:
            ids = hooks.apply(client, hooks.sandbox_set(endpoint, _token()), deadline_s=wait)
    except hooks.HookError as exc:
        raise Refusal(str(exc)) from None
    print(f"subscriptions active on HAPI -> {endpoint}: {', '.join(ids)} "
          f"(token in {os.environ.get('CARELOOP_FHIR_TOKEN_DEFAULT') and '$CARELOOP_FHIR_TOKEN_DEFAULT' or STATE / 'fhir-token'})")
    return 0


def _settings(args: argparse.Namespace) -> Any:
    from ..settings import get_settings

    return get_settings(database_url=_db_url(args), mappings_dir=args.mappings)


def _backfill(args: argparse.Namespace, base: str, settings: Any) -> Any:
    """``careloop backfill`` of the ``default`` source, pointed at ``base`` (search, no $export)."""
    from ..listeners.fhir_fetch import FhirFetcher
    from ..pipeline.backfill import backfill
    from ..rules.load import load_ruleset
    from ..storage.db import init_db, make_engine

    rs, diags = load_ruleset(settings.mappings_dir)
    if rs is None:
        raise Refusal(f"the mappings in {settings.mappings_dir} do not load ({len(diags)} diagnostics; "
                      "`careloop mappings validate` shows them)")
    src = rs.sources.get("default")
    if src is None:
        raise Refusal(f"no `default` source in {settings.mappings_dir}/sources.yaml")
    src = src.model_copy(update={"fhir": src.fhir.model_copy(update={"base_url": base})})
    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
        fetcher = FhirFetcher.for_source(src, timeout_s=settings.fhir_request_timeout_s)
        assert fetcher is not None  # src has a base_url
        return backfill(engine, rs, src, fetcher, use_export=False, deadline_s=settings.fhir_backfill_timeout_s)
    finally:
        engine.dispose()


def cmd_scenario(args: argparse.Namespace) -> int:
    from . import journeys
    from .scenario_cli import run_scenarios

    names = list(journeys.SCENARIOS) if args.name == "all" else [args.name]
    try:
        names = [journeys.canonical(n) for n in names]
    except KeyError:
        print(f"unknown scenario {args.name!r}; one of: {', '.join(journeys.SCENARIOS)}, all", file=sys.stderr)
        return 2
    try:
        base, ident = _target(args)
        _claim_database(args, ident)
    except Refusal as exc:
        print(f"careloop sandbox scenario: {exc}", file=sys.stderr)
        return 1
    port = urlparse(args.careloop_url).port or 80
    return run_scenarios(names, fhir_base=base, careloop_url=args.careloop_url.rstrip("/"),
                         port=port, token=_token(), database_url=_db_url(args), api_token=args.api_token,
                         sink_url=args.sink_url, workdir=Path(tempfile.mkdtemp(prefix="careloop-scenario-")),
                         step_deadline_s=args.step_deadline, patients=args.patients, seed=args.seed)


def register(sub: Any) -> None:
    from . import hapi
    from .journeys import SCENARIOS

    p = sub.add_parser("sandbox", help="the HAPI FHIR sandbox: up, down, status, seed, scenario")
    s = p.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)

    up = s.add_parser("up", help="start HAPI (Docker if an engine runs, else Java 17 + Maven); print the base URL")
    up.add_argument("--port", type=int, default=int(os.environ.get("CARELOOP_SANDBOX_PORT", "8090")))
    up.add_argument("--runtime", choices=["java", "docker"], default=os.environ.get("CARELOOP_SANDBOX_RUNTIME"))
    up.add_argument("--bind", default=os.environ.get("CARELOOP_SANDBOX_BIND", hapi.DEFAULT_BIND),
                    help="address HAPI listens on (docker: publishes on); default %(default)s, loopback only")
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
    sc.add_argument("--patients", type=int, default=200, help="outcomes scenario: synthetic patients (default %(default)s)")
    sc.add_argument("--seed", type=int, default=14, help="outcomes scenario: random seed (default %(default)s)")
    common(sc)
    sc.set_defaults(func=cmd_scenario)
