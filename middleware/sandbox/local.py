"""A careloop and a webhook sink for sandbox scenarios, plus a small operator-API client.

:class:`LocalCareloop` runs the real service (:class:`middleware.service.Runtime`: HTTP,
MLLP, workers) in a background thread on loopback, with a SQLite database, a demo copy of
the mappings (:mod:`.demo_mappings`) and a :class:`~middleware.delivery.sink.SinkServer`
that the ``webhook`` destination points at. :class:`CareloopApi` reads ``/api/messages``,
``/api/events``, ``/api/triggers`` and ``/api/deliveries`` of any careloop.

Usage::

    with LocalCareloop.start(fhir_base=hapi_url, workdir=tmp, token="t") as cl:
        api = CareloopApi(cl.url)
        print(api.events(limit=5), cl.sink.received())
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from ..delivery.sink import SinkServer, webhook_secret
from . import demo_mappings
from .hapi import repo_root

Json = dict[str, Any]
#: the environment variable the ``default`` source reads its notification token from
TOKEN_ENV = "CARELOOP_FHIR_TOKEN_DEFAULT"


class CareloopError(RuntimeError):
    """careloop could not be started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def is_careloop(url: str, timeout_s: float = 2.0) -> bool:
    """True when ``url`` answers ``GET /healthz`` with 200."""
    try:
        return httpx.get(url.rstrip("/") + "/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class CareloopApi:
    """Read-only client of careloop's operator API (``api_token`` when the server needs one)."""

    url: str
    api_token: str | None = None
    timeout_s: float = 10.0

    def _get(self, path: str, **params: Any) -> list[Json]:
        headers = {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}
        clean = {k: v for k, v in params.items() if v is not None}
        r = httpx.get(self.url.rstrip("/") + path, params=clean, headers=headers, timeout=self.timeout_s)
        r.raise_for_status()
        items: list[Json] = r.json()["items"]
        return items

    def messages(self, limit: int = 200, source: str | None = None) -> list[Json]:
        return self._get("/api/messages", limit=limit, source=source)

    def events(self, limit: int = 200, **filters: Any) -> list[Json]:
        return self._get("/api/events", limit=limit, **filters)

    def triggers(self, limit: int = 200, **filters: Any) -> list[Json]:
        return self._get("/api/triggers", limit=limit, **filters)

    def deliveries(self, limit: int = 200, **filters: Any) -> list[Json]:
        return self._get("/api/deliveries", limit=limit, **filters)

    def outcomes(self, goal_id: str) -> Json | None:
        """``GET /api/reports/outcomes/{goal_id}`` (JSON); ``None`` while the goal has no entry (404)."""
        headers = {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}
        r = httpx.get(f"{self.url.rstrip('/')}/api/reports/outcomes/{goal_id}", headers=headers, timeout=self.timeout_s)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        out: Json = r.json()
        return out

    def all_pages(self, kind: str, since: int = 0, **filters: Any) -> list[Json]:
        """Every ``/api/{kind}`` row (``events``, ``triggers`` …) with id > ``since``, oldest first,
        read in pages of 1000 (``before_id``)."""
        out: list[Json] = []
        before: int | None = None
        while True:
            page = self._get(f"/api/{kind}", limit=1000, before_id=before, **filters)
            fresh = [r for r in page if int(r["id"]) > since]
            out += fresh
            if len(page) < 1000 or len(fresh) < len(page):
                break
            before = int(page[-1]["id"])
        return sorted(out, key=lambda r: int(r["id"]))

    def newest_ids(self) -> dict[str, int]:
        """The newest message/event/trigger/delivery ids: a watermark for "what happened since"."""
        out = {}
        for name, rows in (("messages", self.messages(1)), ("events", self.events(1)),
                           ("triggers", self.triggers(1)), ("deliveries", self.deliveries(1))):
            out[name] = int(rows[0]["id"]) if rows else 0
        return out


@dataclass
class LocalCareloop:
    """careloop in a background thread on loopback, with its own sink; stop with :meth:`stop`."""

    url: str
    sink: SinkServer
    database_url: str
    mappings_dir: Path
    speedups: list[demo_mappings.SpeedUp]
    token: str
    _runtime: Any = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _env_before: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def start(cls, *, fhir_base: str, workdir: Path, token: str, port: int | None = None,
              database_url: str | None = None, speed_up: bool = True, mappings_src: Path | None = None,
              sink_host: str = "127.0.0.1", deadline_s: float = 60.0,
              extra_rules: dict[str, str] | None = None) -> "LocalCareloop":
        """Start a sink and careloop (HTTP on ``port``, default ephemeral; MLLP ephemeral).

        ``database_url`` defaults to ``sqlite:///{workdir}/careloop.db``. Sets the process
        environment variable :data:`TOKEN_ENV` (careloop's FHIR listener reads it per request)
        and restores it on :meth:`stop`. Raises :class:`CareloopError` when it does not come up.
        """
        from ..service import ConfigError, Runtime
        from ..settings import Settings

        workdir.mkdir(parents=True, exist_ok=True)
        secret = webhook_secret()
        sink = SinkServer(secrets=[secret], host=sink_host)
        sink.start()
        mappings = workdir / "mappings"
        speedups = demo_mappings.prepare(mappings_src or repo_root() / "mappings", mappings,
                                         sink_url=f"http://127.0.0.1:{sink.port}/hooks", fhir_base=fhir_base,
                                         speed_up=speed_up, extra_rules=extra_rules)
        env_before = {k: os.environ.get(k) for k in (TOKEN_ENV, "CARELOOP_WEBHOOK_SECRET")}
        os.environ[TOKEN_ENV] = token
        os.environ["CARELOOP_WEBHOOK_SECRET"] = secret
        http_port = port or free_port()
        db = database_url or f"sqlite:///{workdir}/careloop.db"
        settings = Settings(database_url=db, mappings_dir=mappings, http_port=http_port, mllp_port=free_port(),
                            http_host="127.0.0.1", mllp_host="127.0.0.1", worker_poll_interval_s=0.05)
        try:
            rt = Runtime(settings)
        except ConfigError as exc:
            sink.stop()
            raise CareloopError(f"demo mappings do not load: {exc}") from exc
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(rt.serve())
            except (asyncio.CancelledError, Exception):  # stop() cancels; a failure shows as "not ready"
                pass
            finally:
                loop.close()

        thread = threading.Thread(target=run, name="careloop-sandbox", daemon=True)
        thread.start()
        inst = cls(f"http://127.0.0.1:{http_port}", sink, db, mappings, speedups, token, rt, loop, thread, env_before)
        end = time.monotonic() + deadline_s
        while not is_careloop(inst.url, 1.0):
            if time.monotonic() > end or not thread.is_alive():
                inst.stop()
                raise CareloopError(f"careloop did not answer /healthz on {inst.url} within {deadline_s:.0f}s")
            time.sleep(0.05)
        return inst

    def close_windows(self, at: datetime) -> int:
        """Settle every journey entry whose goal window has closed by ``at`` (the service does it
        every minute with the real clock; a scenario passes a later clock to read settled
        outcomes now). Returns the number settled."""
        from ..outcomes.track import close_windows

        assert self._runtime is not None, "careloop is stopped"
        total = 0
        while (k := close_windows(self._runtime.engine, self._runtime.ruleset(), at)):
            total += k
        return total

    def __enter__(self) -> "LocalCareloop":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop careloop (cancel its tasks, wait for the thread) and the sink; restore the env."""
        loop, thread = self._loop, self._thread
        # Cancelling uvicorn's lifespan logs a CancelledError traceback at ERROR; it is expected here.
        uv_log = logging.getLogger("uvicorn.error")
        level = uv_log.level
        uv_log.setLevel(logging.CRITICAL)
        if loop is not None and thread is not None and thread.is_alive():
            def cancel() -> None:
                for t in asyncio.all_tasks(loop):
                    t.cancel()
            try:
                loop.call_soon_threadsafe(cancel)
            except RuntimeError:
                pass
            thread.join(timeout=20)
        if self._runtime is not None:
            self._runtime.engine.dispose()
        uv_log.setLevel(level)
        self.sink.stop()
        for k, v in self._env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._loop = self._thread = self._runtime = None
