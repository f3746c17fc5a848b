"""The running careloop (Runtime + uvicorn on an ephemeral loopback port, in a thread) and a
FHIR stub server, for real-HTTP tests of the FHIR listener."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlmodel import Session, col, select

from middleware.settings import Settings
from middleware.storage.tables import EventRow, InboundMessage, KeyValue, ResourceState, TriggerRow

from fhir_stub import FhirStub

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"


def sources_yaml(stub_base: str) -> str:
    return f"""
sources:
  - name: default
    kind: hl7v2
    hl7:
      timezone: America/New_York
      mrn_authority: HOSP
      identifier_systems: {{HOSP: "{MRN_SYSTEM}"}}
  - name: hospital
    kind: fhir
    timezone: America/New_York
    fhir:
      base_url: "{stub_base}"
      allow_private_network: true
      version: R4
      notification_token_env: TEST_FHIR_TOKEN_HOSPITAL
      reconcile_interval_s: 3600
      reconcile_overlap_s: 5
      identifier_systems: ["{MRN_SYSTEM}"]
  - name: clinic5
    kind: fhir
    fhir:
      base_url: "{stub_base}"
      allow_private_network: true
      version: R5
      notification_token_env: TEST_FHIR_TOKEN_CLINIC5
      reconcile_interval_s: 3600
      reconcile_overlap_s: 5
  - name: open
    kind: fhir
    fhir:
      notification_token_env: TEST_FHIR_TOKEN_OPEN_UNSET
"""


class App:
    """careloop serving HTTP on loopback; DB helpers read the same database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runtime: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        import uvicorn

        from middleware.api.app import create_app
        from middleware.service import Runtime

        self.loop = asyncio.get_running_loop()
        rt = Runtime(self.settings)
        self.runtime = rt
        tasks = await rt.start_workers()
        config = uvicorn.Config(create_app(rt), log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self._ready.set()
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            rt.engine.dispose()

    def start(self) -> "App":
        self.thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    self.wait_settled()  # the start-up sweep is done
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("careloop did not start")

    def stop(self) -> None:
        if self.loop is not None and getattr(self, "server", None) is not None:
            self.server.should_exit = True
        self.thread.join(15)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the app's loop (e.g. ``runtime.reconciler.sweep(...)``)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # -- database views -----------------------------------------------------------------
    def session(self) -> Session:
        return Session(self.runtime.engine)

    def events(self, **where: Any) -> list[EventRow]:
        with self.session() as s:
            stmt = select(EventRow).order_by(col(EventRow.id))
            for k, v in where.items():
                stmt = stmt.where(getattr(EventRow, k) == v)
            return list(s.exec(stmt))

    def inbound(self) -> list[InboundMessage]:
        with self.session() as s:
            return list(s.exec(select(InboundMessage).order_by(col(InboundMessage.id))))

    def state(self, key: str) -> ResourceState | None:
        with self.session() as s:
            return s.get(ResourceState, key)

    def kv(self, key: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(KeyValue, key)
            return orjson.loads(row.value) if row else None

    def triggers(self) -> list[TriggerRow]:
        with self.session() as s:
            return list(s.exec(select(TriggerRow)))

    def settled(self) -> bool:
        """Nothing left to process and the reconciler idle."""
        with self.session() as s:
            waiting = s.exec(select(InboundMessage.id).where(InboundMessage.status == "received")).first()
        rec = self.runtime.reconciler
        return waiting is None and not rec._sweeps and not rec._reads and rec.idle.is_set()

    def wait(self, pred: Callable[[], Any], timeout: float = 15.0) -> Any:
        end = time.monotonic() + timeout
        while True:
            got = pred()
            if got:
                return got
            if time.monotonic() > end:
                raise AssertionError("condition not met in time")
            time.sleep(0.02)

    def wait_settled(self, timeout: float = 15.0) -> None:
        time.sleep(0.05)
        self.wait(self.settled, timeout)
        time.sleep(0.05)
        self.wait(self.settled, timeout)


def make_settings(tmp: Path, stub_base: str, database_url: str | None = None) -> Settings:
    """Settings for ``stub_base`` on ``database_url`` (a test's ``db_url``; the benchmarks: SQLite in ``tmp``)."""
    mappings = tmp / "mappings"
    shutil.copytree(REPO / "mappings", mappings)
    (mappings / "sources.yaml").write_text(sources_yaml(stub_base))
    return Settings(database_url=database_url or f"sqlite:///{tmp}/careloop.db", mappings_dir=mappings, http_port=0, mllp_port=0,
                    worker_poll_interval_s=0.05)


@pytest.fixture
def stub() -> Iterator[FhirStub]:
    with FhirStub() as s:
        yield s


@pytest.fixture
def app(tmp_path: Path, stub: FhirStub, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[App]:
    monkeypatch.setenv("TEST_FHIR_TOKEN_HOSPITAL", TOKEN)
    monkeypatch.setenv("TEST_FHIR_TOKEN_CLINIC5", TOKEN)
    monkeypatch.delenv("TEST_FHIR_TOKEN_OPEN_UNSET", raising=False)
    monkeypatch.setenv("CARELOOP_WEBHOOK_URL", "http://127.0.0.1:9/hooks")
    a = App(make_settings(tmp_path, stub.base, db_url)).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def client(app: App) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as c:
        yield c
