"""Shared harness for the MLLP listener tests: a real listener on loopback with the real inbox
writer on SQLite, under the event loop the test runs on (asyncio or uvloop)."""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from middleware.config.listeners import MllpListenerConfig
from middleware.config.sources import Source, Sources
from middleware.listeners.mllp import MllpListener
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboxWriter

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
    def __init__(self, db: Path, writer: InboxWriter, listener: MllpListener, task: asyncio.Task[None]) -> None:
        self.db, self.writer, self.listener, self.task = db, writer, listener, task

    @property
    def port(self) -> int:
        return self.listener.port

    def rows(self, where: str = "1=1") -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.db)
        try:
            return con.execute(
                f"SELECT control_id, status, error, source, raw FROM inbound_message WHERE {where} ORDER BY id"
            ).fetchall()
        finally:
            con.close()

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
async def mllp(tmp_path: Path) -> AsyncIterator[HarnessFactory]:
    made: list[Harness] = []

    async def make(*, sources: list[Source] | None = None, listener_kw: dict[str, Any] | None = None,
                   **config: Any) -> Harness:
        db = tmp_path / f"m{len(made)}.db"
        engine = make_engine(f"sqlite:///{db}")
        init_db(engine)
        writer = InboxWriter(engine)
        task = asyncio.create_task(writer.run())
        port = config.pop("port", 0)
        cfg = MllpListenerConfig(port=port, **config)
        srcs = Sources(sources or [], [cfg])
        listener = MllpListener(sources=srcs, writer=writer, port=port, config=cfg, **(listener_kw or {}))
        await listener.start()
        h = Harness(db, writer, listener, task)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.listener.close()
        h.task.cancel()
        await asyncio.gather(h.task, return_exceptions=True)
        h.writer.engine.dispose()
