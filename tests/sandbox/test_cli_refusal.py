"""``careloop sandbox seed|scenario`` talk only to a sandbox of theirs, or to ``--fhir-url``
(issue 11, item 7): they used to fall back to whatever recorded URL, or ``127.0.0.1:8090``,
and wrote into another FHIR server that happened to be there.

The "other server" here is a real loopback HTTP server that answers like a FHIR server and
records what it is sent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from middleware.sandbox import hapi

ROOT = Path(__file__).resolve().parents[2]


class _Fhir(BaseHTTPRequestHandler):
    """Just enough FHIR for seed: metadata, a transaction, empty searches, Subscriptions that activate."""

    calls: list[tuple[str, str]] = []

    def _send(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, object]:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        return json.loads(raw) if raw else {}

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(("GET", self.path))
        if self.path.startswith("/fhir/metadata"):
            self._send(200, {"resourceType": "CapabilityStatement", "status": "active"})
        elif self.path.startswith("/fhir/Subscription/"):
            self._send(200, {"resourceType": "Subscription", "id": self.path.rsplit("/", 1)[1], "status": "active"})
        else:
            self._send(200, {"resourceType": "Bundle", "type": "searchset", "entry": []})

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        self.calls.append(("POST", self.path))
        entries = body.get("entry") or []
        self._send(200, {"resourceType": "Bundle", "type": "transaction-response",
                         "entry": [{"response": {"status": "201 Created"}} for _ in entries]})  # type: ignore[union-attr]

    def do_PUT(self) -> None:  # noqa: N802
        body = self._body()
        self.calls.append(("PUT", self.path))
        self._send(201, {**body, "status": "requested"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def other_fhir() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    calls: list[tuple[str, str]] = []
    handler = type("Handler", (_Fhir,), {"calls": calls})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/fhir", calls
    finally:
        srv.shutdown()
        srv.server_close()


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "middleware", "sandbox", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def _assert_refused(res: subprocess.CompletedProcess[str], cmd: str) -> None:
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"careloop sandbox {cmd}: no sandbox of ours is running")
    assert "careloop sandbox up" in lines[0] and "--fhir-url" in lines[0]


@pytest.mark.parametrize("cmd", [["seed"], ["scenario", "book-then-no-show"]])
def test_refuses_without_a_sandbox(tmp_path: Path, cmd: list[str]) -> None:
    _assert_refused(_cli(tmp_path, *cmd, "--careloop-url", "http://127.0.0.1:9"), cmd[0])


@pytest.mark.parametrize("run_id", [None, "0123abcd"])
def test_refuses_a_recorded_server_that_is_not_ours(tmp_path: Path, other_fhir: tuple[str, list[tuple[str, str]]],
                                                    run_id: str | None) -> None:
    """State left behind (or forged) pointing at a live FHIR server whose process is not our
    java with this run id: nothing is written there."""
    base, calls = other_fhir
    state = tmp_path / ".careloop" / "sandbox"
    state.mkdir(parents=True)
    record = {"base_url": base, "pid": os.getpid(), "log_path": str(state / "hapi.log"), "runtime": "java",
              "port": int(base.split(":")[2].split("/")[0]), "started_in_s": 1.0, "started_at": 0.0}
    if run_id:
        record["run_id"] = run_id
    (state / "hapi.json").write_text(json.dumps(record))
    res = _cli(tmp_path, "seed", "--careloop-url", "http://127.0.0.1:9", "--mappings", str(ROOT / "mappings"))
    _assert_refused(res, "seed")
    assert not [c for c in calls if c[0] != "GET"], calls


def test_fhir_url_given_explicitly_is_used_and_seed_delegates_to_the_backfill(
        tmp_path: Path, other_fhir: tuple[str, list[tuple[str, str]]]) -> None:
    base, calls = other_fhir
    res = _cli(tmp_path, "seed", "--fhir-url", base, "--careloop-url", "http://127.0.0.1:9",
               "--mappings", str(ROOT / "mappings"))
    assert res.returncode == 0, res.stderr
    assert ("POST", "/fhir") in calls
    searched = {p.split("?")[0] for m, p in calls if m == "GET" and "_include=" in p}
    assert searched == {"/fhir/Appointment", "/fhir/Encounter", "/fhir/CarePlan"}  # pipeline/backfill.py's search
    assert "backfilled careloop" in res.stdout and "subscriptions active" in res.stdout


def test_up_refuses_a_fhir_server_it_did_not_start(tmp_path: Path, other_fhir: tuple[str, list[tuple[str, str]]]) -> None:
    base, _ = other_fhir
    port = int(base.split(":")[2].split("/")[0])
    with pytest.raises(hapi.SandboxError, match="did not start"):
        hapi.start(port=port, workdir=tmp_path, runtime="java")
    assert not (tmp_path / "hapi.json").exists()
