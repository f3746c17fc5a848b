"""A local Standard Webhooks receiver for demos and tests (``careloop sink``).

It verifies each POST's signature, de-duplicates on ``webhook-id`` (counting duplicates),
prints one line per call (trigger type, webhook id, contact key: ids only, no PHI) and
serves ``GET /received``: a JSON list of what arrived, each with ``verified`` and
``duplicate`` flags. ``DELETE /received`` clears it. Tests can script the next answers
(e.g. 410, or 429 with Retry-After) with :meth:`SinkServer.respond_with`.

    run_sink("127.0.0.1", 8099, ["whsec_..."])                 # CLI, blocks
    with SinkServer(["whsec_..."]) as sink:                    # tests, ephemeral port
        ...post to sink.url...
        assert sink.received()[0]["verified"]
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .signing import WebhookVerificationError, verify

#: development-only secret shared by `make run` and `careloop sink`; production sets CARELOOP_WEBHOOK_SECRET
DEV_WEBHOOK_SECRET = "whsec_Y2FyZWxvb3AtZGV2LXdlYmhvb2stc2VjcmV0LTAwMDE="


def webhook_secret() -> str:
    """The webhook secret of the local sink and the development webhook destination."""
    return os.environ.get("CARELOOP_WEBHOOK_SECRET") or DEV_WEBHOOK_SECRET


@dataclass
class ScriptedResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class SinkState:
    """What the sink has received, plus scripted answers; thread-safe."""

    def __init__(self, secrets: Sequence[str], tolerance_s: float = 300,
                 echo: Callable[[str], None] | None = None) -> None:
        self.secrets = list(secrets)
        self.tolerance_s = tolerance_s
        self.echo = echo
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._script: list[ScriptedResponse] = []

    def script(self, status: int, headers: dict[str, str] | None = None, times: int = 1) -> None:
        with self._lock:
            self._script.extend(ScriptedResponse(status, dict(headers or {})) for _ in range(times))

    def next_scripted(self) -> ScriptedResponse | None:
        with self._lock:
            return self._script.pop(0) if self._script else None

    def record(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        """Verify, de-duplicate and store one call; return its record."""
        webhook_id = headers.get("webhook-id", "")
        verified, error = False, None
        if self.secrets:
            try:
                verify(self.secrets, headers, body, tolerance_s=self.tolerance_s)
                verified = True
            except (WebhookVerificationError, ValueError) as exc:
                error = str(exc)
        else:
            error = "no secret configured"
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        raw_data = doc.get("data") if isinstance(doc, dict) else None
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        with self._lock:
            duplicate = verified and webhook_id in self._seen
            if verified:
                self._seen.add(webhook_id)
            rec = {
                "webhook_id": webhook_id,
                "type": doc.get("type") if isinstance(doc, dict) else None,
                "trigger_id": data.get("trigger_id"),
                "contact_key": data.get("contact_key"),
                "verified": verified,
                "duplicate": duplicate,
                "error": error,
                "received_at": datetime.now(timezone.utc).isoformat(),
                "body": doc,
            }
            self._records.append(rec)
        return rec

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records]

    def duplicates(self) -> int:
        with self._lock:
            return sum(1 for r in self._records if r["duplicate"])

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._seen.clear()


def _line(rec: dict[str, Any], status: int) -> str:
    mark = "ok " if rec["verified"] else "BAD"
    dup = " DUPLICATE" if rec["duplicate"] else ""
    return (f"[sink] {status} {mark} type={rec['type']} id={rec['webhook_id']} "
            f"contact={rec['contact_key']}{dup}" + (f" ({rec['error']})" if rec["error"] else ""))


def create_sink_app(state: SinkState) -> FastAPI:
    """The receiver app over ``state`` (no I/O at import time)."""
    app = FastAPI(title="careloop sink", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/{path:path}")
    async def receive(path: str, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        rec = state.record(headers, body)
        scripted = state.next_scripted()
        if scripted is not None:
            status, extra = scripted.status, scripted.headers
        elif state.secrets and not rec["verified"]:
            status, extra = 401, {}
        else:
            status, extra = 200, {}
        if state.echo:
            state.echo(_line(rec, status))
        return JSONResponse({"duplicate": rec["duplicate"]}, status_code=status, headers=extra)

    @app.get("/received")
    async def received() -> list[dict[str, Any]]:
        return state.received()

    @app.delete("/received")
    async def clear() -> dict[str, bool]:
        state.clear()
        return {"cleared": True}

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        recs = state.received()
        return {"total": len(recs), "duplicates": state.duplicates(),
                "unverified": sum(1 for r in recs if not r["verified"])}

    return app


def _echo_stdout(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def run_sink(host: str, port: int, secrets: Sequence[str]) -> None:
    """Serve the sink until interrupted (``careloop sink --host --port --secret``)."""
    state = SinkState(secrets, echo=_echo_stdout)
    uvicorn.run(create_sink_app(state), host=host, port=port, log_level="warning", access_log=False)


class SinkServer:
    """The sink on a loopback ephemeral port, in a background thread (tests, scenario runners).

    ``url`` is the base URL; ``received()`` the calls so far; ``respond_with(status, headers, times)``
    scripts the next answers. Raises :class:`RuntimeError` if the server does not start in 10 s.
    """

    def __init__(self, secrets: Sequence[str] = (), host: str = "127.0.0.1", echo: bool = False,
                 tolerance_s: float = 300) -> None:
        self.state = SinkState(secrets, tolerance_s, echo=_echo_stdout if echo else None)
        self.host = host
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "SinkServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(create_sink_app(self.state), log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="careloop-sink", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("sink server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def received(self) -> list[dict[str, Any]]:
        return self.state.received()

    def duplicates(self) -> int:
        return self.state.duplicates()

    def respond_with(self, status: int, headers: dict[str, str] | None = None, times: int = 1) -> None:
        self.state.script(status, headers, times)
