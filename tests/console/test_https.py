"""HTTPS on the HTTP port: a real TLS client sees the renewed certificate on its next handshake
without a restart; forwarded headers believed only from the configured proxies; ``serve``
refuses plain HTTP beyond loopback in one line."""
from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from middleware.delivery.signing import generate_secret
from middleware.storage.queries import admin_audit as aq
from middleware.storage.sql import unit
from tests.integration.tlscerts import issue, make_ca
from tests.support.console import write_users
from tests.support.server import REPO, InProcess, start_in_process, wait_until


def _serial_served(port: int, ca_file: Path) -> int:
    """Open a new TLS connection (verifying against the test CA) and return the certificate's serial."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def tls_server(db_url: str, mappings_dir: Path, tmp_path: Path) -> Iterator[tuple[InProcess, Path, Path, Path, object]]:
    ca = make_ca()
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem())
    cert, key = issue(ca, "careloop-a", server=True).write(tmp_path, "server")
    srv = start_in_process(db_url, mappings_dir, tls_cert_file=cert, tls_key_file=key,
                           console_users_file=write_users(tmp_path / "users.yaml"))
    yield srv, ca_file, cert, key, ca
    srv.stop()


def test_console_over_tls_and_a_renewed_certificate_without_restart(tls_server) -> None:  # type: ignore[no-untyped-def]
    srv, ca_file, cert, key, ca = tls_server
    port = int(srv.http_url.rsplit(":", 1)[1])
    assert srv.http_url.startswith("https://")
    r = httpx.get(srv.http_url + "/signin", verify=ssl.create_default_context(cafile=str(ca_file)))
    assert r.status_code == 200 and r.headers["strict-transport-security"].startswith("max-age=")
    first = _serial_served(port, ca_file)
    renewed = issue(ca, "careloop-b", server=True)  # type: ignore[arg-type]
    key.write_bytes(renewed.key_pem())  # a key written before its certificate: the old pair stays in use meanwhile
    cert.write_bytes(renewed.cert_pem())
    os.utime(cert)
    wait_until(lambda: srv.runtime.https is not None and srv.runtime.https.reloads >= 1, 15, what="certificate reload")
    assert _serial_served(port, ca_file) == renewed.cert.serial_number != first
    assert httpx.get(srv.http_url + "/healthz", verify=ssl.create_default_context(cafile=str(ca_file))).status_code == 200


def _signin_client(srv: InProcess, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(srv.http_url + "/signin", data={"username": "proxied", "password": "wrong-password-1"},
                      headers=headers, timeout=10)


@pytest.mark.parametrize("trusted, seen", [("127.0.0.1, 10.0.0.0/8", "203.0.113.7"), ("10.9.9.9", "127.0.0.1"),
                                           (None, "127.0.0.1")])
def test_forwarded_headers_only_from_trusted_proxies(db_url: str, mappings_dir: Path, tmp_path: Path,
                                                     trusted: str | None, seen: str) -> None:
    srv = start_in_process(db_url, mappings_dir, trusted_proxies=trusted,
                           console_users_file=write_users(tmp_path / "users.yaml"))
    try:
        r = _signin_client(srv, {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"})
        assert r.status_code == 401
        # the scheme the proxy reports is believed only from it: HSTS is sent on https only
        assert ("strict-transport-security" in r.headers) == (seen != "127.0.0.1")
        with unit(srv.runtime.engine) as u:
            [row] = aq.page(u, limit=5, action="console.signin", actor="proxied", since=None, before_id=None)
        assert row.client == seen
    finally:
        srv.stop()


def _serve(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), "CARELOOP_LOG_LEVEL": "WARNING", **(env or {})}
    return subprocess.run([sys.executable, "-m", "middleware", "serve", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=timeout)


def test_serve_refuses_plain_http_beyond_loopback(tmp_path: Path) -> None:
    strong = {"CARELOOP_WEBHOOK_SECRET": generate_secret(), "CARELOOP_CONTACT_KEY_SECRET": "a-synthetic-contact-secret-of-enough-length",
              "CARELOOP_API_TOKEN": "a-synthetic-api-token-of-43-characters-xxxx"}
    p = _serve(["--http-host", "0.0.0.0"], tmp_path, strong)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "careloop serve: refusing to serve plain HTTP on 0.0.0.0 (beyond loopback): set CARELOOP_TLS_CERT_FILE and "
        "CARELOOP_TLS_KEY_FILE, or CARELOOP_TRUSTED_PROXIES for a TLS-terminating proxy (or, on a network you "
        "control, CARELOOP_ALLOW_PLAIN_HTTP=true)"]
    assert not (tmp_path / ".careloop").exists()  # nothing created


def test_plain_http_beyond_loopback_only_when_allowed_explicitly() -> None:
    from middleware.console.https import plain_http_refusal

    assert plain_http_refusal("0.0.0.0", False, None, None, None) is not None
    assert plain_http_refusal("0.0.0.0", False, None, None, None, allow_plain=True) is None  # e.g. a compose network
    assert plain_http_refusal("127.0.0.1", True, None, None, None) is None
    assert plain_http_refusal("0.0.0.0", False, None, None, "10.0.0.5") is None  # a TLS-terminating proxy


def test_serve_refuses_half_or_unusable_tls_in_one_line(tmp_path: Path) -> None:
    half = _serve([], tmp_path, {"CARELOOP_TLS_CERT_FILE": str(tmp_path / "a.crt")})
    assert half.returncode == 2 and half.stderr.strip().splitlines() == [
        "careloop serve: set both CARELOOP_TLS_CERT_FILE and CARELOOP_TLS_KEY_FILE (or neither)"]
    (tmp_path / "a.crt").write_text("not a certificate")
    (tmp_path / "a.key").write_text("not a key")
    bad = _serve([], tmp_path, {"CARELOOP_TLS_CERT_FILE": str(tmp_path / "a.crt"), "CARELOOP_TLS_KEY_FILE": str(tmp_path / "a.key")})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("careloop serve: cannot use the TLS certificate")
