"""Every network wait has a deadline and says what it waited for (issue 11, item 3).

Each test points a real client at a real loopback server that accepts and never answers,
half-closes, or drips its body (``hostile.py``), and checks that the wait ends within its
deadline with a message naming what it waited for and for how long.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from middleware.listeners.fhir_fetch import FetchError, FetchTimeout, FhirFetcher

from support.hostile import HostileServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["silent", "drip"])
def test_fhir_read_ends_at_its_deadline_and_names_the_wait(mode: str) -> None:
    with HostileServer(mode) as srv:  # type: ignore[arg-type]
        f = FhirFetcher(srv.url + "/fhir", timeout_s=1.0, allow_private_network=True)
        t0 = time.monotonic()
        with pytest.raises(FetchTimeout) as ei:
            f.read("Appointment", "a1")
        took = time.monotonic() - t0
    assert took < 1.8, f"waited {took:.1f} s for a 1 s deadline"
    msg = str(ei.value)
    assert "timed out after 1 s" in msg and srv.url + "/fhir" in msg and "GET Appointment/a1" in msg


def test_fhir_read_from_a_half_closing_server_says_what_failed() -> None:
    with HostileServer("half-close") as srv:
        f = FhirFetcher(srv.url + "/fhir", timeout_s=2.0, allow_private_network=True)
        t0 = time.monotonic()
        with pytest.raises(FetchError) as ei:
            f.search("Appointment", {"_lastUpdated": "gt2026-01-01"}).__next__()
        took = time.monotonic() - t0
    assert took < 2.5
    msg = str(ei.value)
    assert srv.url + "/fhir" in msg and "GET Appointment (search)" in msg and "2026-01-01" not in msg


def test_search_paging_ends_at_the_callers_deadline() -> None:
    with HostileServer("silent") as srv:
        f = FhirFetcher(srv.url + "/fhir", timeout_s=30.0, allow_private_network=True)
        t0 = time.monotonic()
        with pytest.raises(FetchTimeout):
            list(f.search("Encounter", {"_count": "50"}, deadline=time.monotonic() + 0.5))
    assert time.monotonic() - t0 < 1.2


def test_reconciler_sweep_ends_at_the_sweep_deadline(tmp_path: Path, db_url: str) -> None:
    from middleware.config.sources import Source
    from middleware.pipeline.reconcile import Reconciler
    from middleware.rules.load import load_ruleset
    from middleware.storage.db import init_db, make_engine
    from middleware.storage.inbox import InboxWriter

    rs, _ = load_ruleset(ROOT / "mappings")
    assert rs is not None
    with HostileServer("silent") as srv:
        base = srv.url + "/fhir"
        src = rs.sources.get("default")
        assert src is not None
        fhir_src: Source = src.model_copy(update={"fhir": src.fhir.model_copy(update={"base_url": base})})
        sources = type(rs.sources)([fhir_src])
        engine = make_engine(db_url)
        init_db(engine)
        rec = Reconciler(engine, InboxWriter(engine), lambda: sources, fetch_timeout_s=30.0, sweep_timeout_s=0.8)
        t0 = time.monotonic()
        rep = asyncio.run(rec.sweep("default", ["Appointment", "Encounter"]))
        took = time.monotonic() - t0
        engine.dispose()
    assert took < 1.6, f"sweep took {took:.1f} s for a 0.8 s deadline"
    assert len(rep.errors) == 2
    assert all("sweep of source default timed out after 0.8 s" in e and base in e for e in rep.errors)


def _cli(*args: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "middleware", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


@pytest.mark.parametrize("mode", ["silent", "half-close"])
def test_subscriptions_apply_ends_with_one_line_when_the_server_does_not_answer(mode: str) -> None:
    with HostileServer(mode) as srv:  # type: ignore[arg-type]
        t0 = time.monotonic()
        res = _cli("subscriptions", "apply", "--wait", "2", env={
            "CARELOOP_FHIR_BASE_URL": srv.url + "/fhir", "CARELOOP_FHIR_REQUEST_TIMEOUT_S": "1"})
        took = time.monotonic() - t0
    assert res.returncode == 1
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, res.stderr
    if mode == "silent":
        assert "timed out after 1 s waiting for the FHIR server to answer GET /fhir/Subscription" in lines[0]
        assert took < 8  # interpreter start-up plus one 1 s wait
    else:
        assert "did not answer" in lines[0]


class _NeverActive(BaseHTTPRequestHandler):
    """A FHIR server whose Subscriptions stay ``requested``."""

    def _send(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/fhir/Subscription?"):
            self._send(200, {"resourceType": "Bundle", "type": "searchset", "entry": []})
        else:
            self._send(200, {"resourceType": "Subscription", "id": "s1", "status": "requested",
                             "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:1/fhir/default"}})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._send(201, {"resourceType": "Subscription", "id": "s1", "status": "requested"})

    def log_message(self, *args: object) -> None:
        pass


def test_subscriptions_apply_activation_wait_names_the_subscription_and_the_wait() -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _NeverActive)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/fhir"
        t0 = time.monotonic()
        res = _cli("subscriptions", "apply", "--types", "Appointment", env={
            "CARELOOP_FHIR_BASE_URL": base, "CARELOOP_SUBSCRIPTION_ACTIVATION_TIMEOUT_S": "1.5"})
        took = time.monotonic() - t0
    finally:
        srv.shutdown()
        srv.server_close()
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"timed out after 1.5 s waiting for Subscription/s1 on {base} to become active (last status: requested)" \
        in res.stderr
    assert took < 10


def test_sandbox_health_wait_ends_at_its_deadline() -> None:
    from middleware.sandbox import hapi

    with HostileServer("silent") as srv:
        t0 = time.monotonic()
        with pytest.raises(hapi.SandboxError) as ei:
            hapi.wait_ready(srv.url + "/fhir", deadline_s=1.0)
        took = time.monotonic() - t0
    assert took < 1.6, f"waited {took:.1f} s for a 1 s deadline"
    assert f"timed out after 1 s waiting for the HAPI sandbox to answer GET {srv.url}/fhir/metadata" in str(ei.value)
