"""Shared harness for the MLLP listener tests: a real listener on loopback with the real inbox
writer on the database under test (``db_url``), under the event loop the test runs on (asyncio or uvloop)."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from middleware.config.listeners import MllpListenerConfig
from middleware.config.sources import Source, Sources
from middleware.listeners.mllp import MllpListener
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboxWriter
from tests.support.dbrows import fetch

BOTH_LOOPS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


def msa(ack: bytes) -> list[str]:
    seg = next(s for s in ack.decode("latin-1").split("\r") if s.startswith("MSA"))
    return seg.split("|")


async def read_acks(reader: asyncio.StreamReader, n: int, timeout: float = 20) -> list[bytes]:
    out = []
    for _ in range(n):
        out.append((await asyncio.wait_for(reader.readuntil(b"\x1c\r"), timeout)).strip(b"\x0b\x1c\r"))
    return out


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    """True when the server closed (EOF or reset) within ``timeout`` without sending anything."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


class Harness:
    def __init__(self, writer: InboxWriter, listener: MllpListener, task: asyncio.Task[None]) -> None:
        self.writer, self.listener, self.task = writer, listener, task

    @property
    def port(self) -> int:
        return self.listener.port

    def rows(self, where: str = "1=1") -> list[tuple[Any, ...]]:
        return fetch(self.writer.engine,
                     f"SELECT control_id, status, error, source, raw FROM inbound_message WHERE {where} ORDER BY id")

    async def wait_rows(self, n: int, timeout: float = 10) -> list[tuple[Any, ...]]:
        for _ in range(int(timeout / 0.02)):
            rows = self.rows()
            if len(rows) >= n:
                return rows
            await asyncio.sleep(0.02)
        return self.rows()

    async def wait_open(self, n: int, timeout: float = 5) -> None:
        for _ in range(int(timeout / 0.02)):
            if self.listener.stats.open_connections == n:
                return
            await asyncio.sleep(0.02)


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def mllp(db_url: str, fresh_db_url: Callable[[str], str]) -> AsyncIterator[HarnessFactory]:
    made: list[Harness] = []

    async def make(*, sources: list[Source] | None = None, listener_kw: dict[str, Any] | None = None,
                   **config: Any) -> Harness:
        engine = make_engine(fresh_db_url(f"m{len(made)}") if made else db_url)
        init_db(engine)
        writer = InboxWriter(engine)
        task = asyncio.create_task(writer.run())
        port = config.pop("port", 0)
        cfg = MllpListenerConfig(port=port, **config)
        srcs = Sources(sources or [], [cfg])
        listener = MllpListener(sources=srcs, writer=writer, port=port, config=cfg, **(listener_kw or {}))
        await listener.start()
        h = Harness(writer, listener, task)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.listener.close()
        h.task.cancel()
        await asyncio.gather(h.task, return_exceptions=True)
        h.writer.engine.dispose()
