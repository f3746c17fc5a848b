"""Run a real careloop (HTTP + MLLP + workers) in-process on ephemeral loopback ports,
or as a subprocess (for restart and crash tests)."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx

from middleware.service import Runtime
from middleware.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``pred`` until truthy or the deadline; return its value or raise AssertionError."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@dataclass
class InProcess:
    runtime: Runtime
    http_url: str
    mllp_port: int
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    task: Any = None
    env: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, **kw: Any) -> Any:
        r = httpx.get(self.http_url + path, timeout=10, **kw)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        """Graceful: ask uvicorn to exit; serve() then closes MLLP and the workers."""
        server = self.runtime.http_server
        if server is not None:
            server.should_exit = True  # type: ignore[attr-defined]
        self.thread.join(timeout=15)
        if self.thread.is_alive():
            def cancel() -> None:
                for t in asyncio.all_tasks(self.loop):
                    t.cancel()
            self.loop.call_soon_threadsafe(cancel)
            self.thread.join(timeout=15)
        self.runtime.engine.dispose()


def start_in_process(database_url: str, mappings: Path, *, clock: Callable[[], Any] | None = None,
                     api_token: str | None = None, **settings: Any) -> InProcess:
    http_port, mllp_port = free_port(), free_port()
    s = Settings(database_url=database_url, mappings_dir=mappings, http_port=http_port, mllp_port=mllp_port,
                 api_token=api_token, **settings)
    rt = Runtime(s, clock=clock)
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(rt.serve())
        except (asyncio.CancelledError, Exception):
            pass
        finally:
            loop.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    url = f"{'https' if s.tls_cert_file else 'http'}://127.0.0.1:{http_port}"
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}

    def ready() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=1, headers=headers, verify=False).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 30, what="careloop /healthz")
    wait_until(lambda: rt.mllp is not None and rt.mllp.port, 10, what="MLLP listener")
    return InProcess(rt, url, rt.mllp.port, th, loop)  # type: ignore[union-attr]


@dataclass
class SubProcess:
    proc: subprocess.Popen[bytes]
    http_url: str
    mllp_port: int
    log: Path

    def get(self, path: str) -> Any:
        r = httpx.get(self.http_url + path, timeout=10)
        r.raise_for_status()
        return r.json()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_subprocess(database_url: str, mappings: Path, workdir: Path, *, env: dict[str, str] | None = None,
                     http_port: int | None = None, mllp_port: int | None = None, wait: bool = True) -> SubProcess:
    http_port, mllp_port = http_port or free_port(), mllp_port or free_port()
    log = workdir / f"serve-{http_port}.log"
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "middleware", "serve", "--http-port", str(http_port), "--mllp-port", str(mllp_port),
         "--database-url", database_url, "--mappings", str(mappings)],
        cwd=workdir, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    sp = SubProcess(proc, f"http://127.0.0.1:{http_port}", mllp_port, log)
    if wait:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"careloop exited early: {log.read_text()[-2000:]}")
            try:
                return httpx.get(sp.http_url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(ready, 60, what="careloop subprocess /healthz")
    return sp
