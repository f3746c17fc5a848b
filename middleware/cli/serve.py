"""``careloop serve``: HTTP API, MLLP listener and workers in one process."""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ._loop import run as run_loop


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database", "--database-url", dest="database_url", metavar="PATH|URL",
                   help="a SQLite file, sqlite:/// or postgresql:// URL [CARELOOP_DATABASE_URL]; "
                        "default .careloop/careloop.db, which only `serve` creates")
    p.add_argument("--mappings", type=Path, dest="mappings_dir", help="mappings directory [CARELOOP_MAPPINGS_DIR]")


def settings_from(args: argparse.Namespace, **more: object):  # type: ignore[no-untyped-def]
    from ..settings import get_settings

    keys = ("database_url", "mappings_dir", "http_host", "http_port", "mllp_host", "mllp_port", "api_token")
    return get_settings(**{k: getattr(args, k, None) for k in keys}, **more)


def open_data(settings: object):  # type: ignore[no-untyped-def]
    """The engine of an existing careloop database (commands that read or change data): a
    missing file or an empty database is refused with one line (``SchemaError``), never created."""
    from ..storage.schema import open_database

    return open_database(settings.database_url, existing=True)  # type: ignore[attr-defined]


def load_rules_or_report(directory: object):  # type: ignore[no-untyped-def]
    """The rule set in ``directory``, or ``None`` after printing its errors (file:line) to stderr
    (warnings and information are for ``careloop mappings validate``)."""
    from ..rules.load import load_ruleset

    rs, diags = load_ruleset(directory)  # type: ignore[arg-type]
    if rs is None:
        for d in diags:
            if d.level == "error":
                print(d, file=sys.stderr)
    return rs


def network_secret_problems(settings: object, beyond_loopback: bool) -> list[str]:
    """Malformed secrets always; beyond loopback also weak ones (development defaults, short
    tokens): see ``cli/_secrets.py``."""
    from ._secrets import malformed_secrets, weak_secrets
    from .sink import DEV_WEBHOOK_SECRET, webhook_secret

    if not beyond_loopback:
        return malformed_secrets(settings)  # type: ignore[arg-type]
    return weak_secrets(settings, webhook_secret(), DEV_WEBHOOK_SECRET)  # type: ignore[arg-type]


def report_secrets(problems: list[str], command: str, beyond_loopback: bool) -> int:
    from ._secrets import report

    return report(problems, command, "refusing to serve beyond loopback: " if beyond_loopback else "")


def first_run_admin(settings: object, rt: object) -> Path | None:
    """First run (no users file, no OIDC issuer): create console user ``admin`` with a random
    password written to a 0600 file beside the users file; that file's path (audited, never the password)."""
    from ..console.users import FIRST_ADMIN, create_first_admin
    from ..delivery.admin_audit import record

    if getattr(settings, "console_oidc_issuer", None):
        return None
    users_file: Path = settings.console_users_file  # type: ignore[attr-defined]
    created = create_first_admin(users_file)
    if created is not None:
        record(rt.engine, actor="careloop", role="system", channel="service", action="users.first_admin",  # type: ignore[attr-defined]
               target_kind="user", target_id=FIRST_ADMIN, detail={"users_file": str(users_file)})
    return created


def cmd_serve(args: argparse.Namespace) -> int:
    from .. import logsafe
    from ..service import ConfigError, Runtime

    settings = settings_from(args, run_worker=False if args.no_worker else None, worker_process=args.worker_process)
    from .sink import webhook_secret

    os.environ.setdefault("CARELOOP_WEBHOOK_SECRET", webhook_secret())
    logsafe.configure(settings.log_level)
    beyond_loopback = not (_is_loopback(settings.http_host) and _is_loopback(settings.mllp_host))
    if not (settings.api_token or settings.api_tokens) and beyond_loopback:
        print("careloop: refusing to listen beyond loopback without an API token; set CARELOOP_API_TOKEN or --api-token", file=sys.stderr)
        return 2
    if problems := network_secret_problems(settings, beyond_loopback):
        return report_secrets(problems, "serve", beyond_loopback)
    from ..console.https import plain_http_refusal

    plain_loopback = _is_loopback(settings.http_host)
    if why := plain_http_refusal(settings.http_host, plain_loopback, settings.tls_cert_file,
                                 settings.tls_key_file, settings.trusted_proxies, settings.allow_plain_http):
        print(f"careloop serve: {why}", file=sys.stderr)
        return 2
    if settings.allow_plain_http and not plain_loopback and settings.tls_cert_file is None and not settings.trusted_proxies:
        print(f"careloop serve: warning: plain HTTP on {settings.http_host} (CARELOOP_ALLOW_PLAIN_HTTP): passwords, "
              "sessions and tokens cross this network unencrypted", file=sys.stderr)
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        import ssl

        from ..console.https import ReloadingTls

        try:
            ReloadingTls(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            print(f"careloop serve: cannot use the TLS certificate {settings.tls_cert_file} and key {settings.tls_key_file}: "
                  f"{getattr(exc, 'reason', None) or exc}", file=sys.stderr)
            return 2
    try:
        rt = Runtime(settings)
    except ConfigError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        print(f"careloop: {len(exc.diagnostics)} error(s) in {settings.mappings_dir}; not starting", file=sys.stderr)
        return 1
    first_admin = first_run_admin(settings, rt)
    scheme = "https" if settings.tls_cert_file else "http"
    print(f"careloop serving: {scheme}://{settings.http_host}:{settings.http_port}  mllp://{settings.mllp_host}:{settings.mllp_port}  "
          f"db={settings.database_url.split('@')[-1]}  mappings={settings.mappings_dir} (version {rt.ruleset().version})", flush=True)
    if first_admin is not None:
        print(f"careloop: console user 'admin' created; its password is in {first_admin} (readable by you only)", flush=True)
    try:
        run_loop(rt.serve(worker_process=settings.worker_process))
    except KeyboardInterrupt:
        pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the HTTP API, the MLLP listener and the workers")
    p.add_argument("--http-host")
    p.add_argument("--http-port", type=int)
    p.add_argument("--mllp-host")
    p.add_argument("--mllp-port", type=int)
    p.add_argument("--api-token", help="bearer token required on /api and /hl7v2 [CARELOOP_API_TOKEN]")
    p.add_argument("--no-worker", action="store_true", help="ingest only; run `careloop worker` elsewhere")
    p.add_argument("--worker-in-process", dest="worker_process", action="store_false", default=None,
                   help="run the worker in this process's threads, not in a child process [CARELOOP_WORKER_PROCESS=false]")
    add_common(p)
    p.set_defaults(func=cmd_serve)
