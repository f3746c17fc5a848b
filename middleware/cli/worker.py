"""``careloop worker``: processing, scheduler and delivery without listeners.

Run any number of these (and ``careloop serve --no-worker`` replicas for ingest) against
one PostgreSQL database: inbound messages, due triggers and deliveries are claimed with
``FOR UPDATE SKIP LOCKED``, so no row is handled by two workers at once.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ._loop import run as run_loop
from .serve import _is_loopback, add_common, network_secret_problems, report_secrets, settings_from

if TYPE_CHECKING:
    from ..settings import Settings


def worker_beyond_loopback(settings: Settings, metrics_host: str | None) -> bool:
    """A worker is in network mode when its database, its metrics port or the configured
    HTTP/MLLP hosts (shared settings with ``serve``) are beyond loopback."""
    from sqlalchemy.engine import make_url

    s = settings
    hosts = [s.http_host, s.mllp_host]
    url = str(s.database_url)
    if not url.startswith("sqlite"):
        try:
            hosts.append(make_url(url).host or "localhost")
        except Exception:
            hosts.append("")
    if metrics_host:
        hosts.append(metrics_host)
    return not all(_is_loopback(h) for h in hosts)


def die_with(parent: int) -> None:
    """``serve``'s worker process: end with its parent, at once, however the parent ends (Linux
    ``PR_SET_PDEATHSIG``; elsewhere the end of file on stdin stops the worker)."""
    import ctypes
    import ctypes.util
    import os
    import signal

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(0)


def cmd_worker(args: argparse.Namespace) -> int:
    from .. import logsafe
    from ..service import ConfigError, Runtime

    if args.parent is not None:
        die_with(args.parent)
    settings = settings_from(args)
    logsafe.configure(settings.log_level)
    beyond = worker_beyond_loopback(settings, args.metrics_host if args.metrics_port else None)
    if problems := network_secret_problems(settings, beyond):
        return report_secrets(problems, "worker", beyond)
    if args.metrics_port:
        print("careloop worker: --metrics-port serves /metrics for this worker", file=sys.stderr)
    from ..storage.schema import require_existing

    require_existing(settings.database_url)  # a worker never starts a new SQLite file: `serve` does
    try:
        rt = Runtime(settings)
    except ConfigError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        print(f"careloop: {len(exc.diagnostics)} error(s) in {settings.mappings_dir}; not starting", file=sys.stderr)
        return 1
    if args.metrics_port:
        from prometheus_client import start_http_server

        rt.install_metrics()

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=rt.meters.registry)
    print(f"careloop worker: db={settings.database_url.split('@')[-1]} mappings={settings.mappings_dir} "
          f"(version {rt.ruleset().version})", flush=True)
    try:
        run_loop(rt.work(parent=args.parent))
    except KeyboardInterrupt:
        pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="run processing, scheduler and delivery only (scale out on PostgreSQL)")
    p.add_argument("--metrics-port", type=int, help="serve this worker's process counters on :PORT/metrics")
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument("--parent", type=int, help=argparse.SUPPRESS)  # `serve`'s worker process (service.WorkerProcess)
    add_common(p)
    p.set_defaults(func=cmd_worker)
