"""The MLLP listener's protocol path over real loopback sockets, with the real inbox writer on
SQLite: pipelining, idle timeout, backpressure (slow reader, full inbox, connection slots),
half-close, storage failure."""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from middleware.config.sources import Sources
from middleware.listeners.mllp import MllpListener
from middleware.listeners.mllp_framing import frame
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboxWriter
from tests.support.dbrows import fetch
from tests.support.hl7msgs import siu

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def msa(ack: bytes) -> list[str]:
    seg = next(s for s in ack.decode("latin-1").split("\r") if s.startswith("MSA"))
    return seg.split("|")


def split_acks(buf: bytes) -> list[bytes]:
    return [p.split(b"\x1c")[0] for p in buf.split(b"\x0b")[1:]]


class Harness:
    def __init__(self, writer: InboxWriter, listener: MllpListener, task: asyncio.Task[None]) -> None:
        self.writer, self.listener, self.task = writer, listener, task

    def rows(self, where: str = "1=1") -> list[tuple[Any, ...]]:
        return fetch(self.writer.engine, f"SELECT control_id, status, error FROM inbound_message WHERE {where} ORDER BY id")

    def connections(self) -> list[Any]:
        return [c for c in self.listener._conns if not c.closed]


@pytest.fixture
async def harness(db_url: str, fresh_db_url: Callable[[str], str]) -> AsyncIterator[Any]:
    made: list[Harness] = []

    async def make(writer_kw: dict[str, Any] | None = None, **listener_kw: Any) -> Harness:
        engine = make_engine(fresh_db_url(f"c{len(made)}") if made else db_url)
        init_db(engine)
        writer = InboxWriter(engine, **(writer_kw or {}))
        task = asyncio.create_task(writer.run())
        listener = MllpListener(sources=Sources([]), writer=writer, port=0, **listener_kw)
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


async def read_acks(reader: asyncio.StreamReader, n: int, timeout: float = 20) -> list[bytes]:
    out = []
    for _ in range(n):
        out.append((await asyncio.wait_for(reader.readuntil(b"\x1c\r"), timeout)).strip(b"\x0b\x1c\r"))
    return out


async def test_many_pipelined_frames_in_one_segment_answered_in_order(harness):
    h = await harness()
    r, w = await asyncio.open_connection("127.0.0.1", h.listener.port)
    n = 300
    w.write(b"".join(frame(siu("S12", control=f"PL-{i}", appt=f"F{i}")) for i in range(n)))
    await w.drain()
    acks = await read_acks(r, n)
    assert [msa(a)[1:3] for a in acks] == [["AA", f"PL-{i}"] for i in range(n)]
    assert [c for c, _, _ in h.rows()] == [f"PL-{i}" for i in range(n)]  # stored in arrival order
    w.close()
    assert h.listener.stats.frames == n and h.listener.stats.acks == {"accept": n}


async def test_split_frames_junk_and_a_pipelined_duplicate(harness):
    h = await harness()
    r, w = await asyncio.open_connection("127.0.0.1", h.listener.port)
    m = frame(siu("S12", control="DUP-1"))
    data = b"\x00\n" + m + b"\n" + m  # junk, a frame, trailing LF, the same frame again
    for i in range(0, len(data), 7):  # in small pieces
        w.write(data[i:i + 7])
        await w.drain()
    a1, a2 = await read_acks(r, 2)
    assert a1 == a2 and msa(a1)[1:3] == ["AA", "DUP-1"]
    assert [s for _, s, _ in h.rows()] == ["received", "duplicate"]
    w.close()


async def test_idle_timeout_closes_and_activity_keeps_it_open(harness):
    h = await harness(idle_timeout_s=0.4)
    r, w = await asyncio.open_connection("127.0.0.1", h.listener.port)
    # busy for longer than the timeout: each message re-arms it
    for i in range(6):
        w.write(frame(siu("S12", control=f"IT-{i}")))
        (ack,) = await read_acks(r, 1)
        assert msa(ack)[1] == "AA"
        await asyncio.sleep(0.15)
    t0 = time.monotonic()
    assert await asyncio.wait_for(r.read(), 5) == b""  # then idle: closed by the server
    assert 0.2 < time.monotonic() - t0 < 3
    w.close()
    for _ in range(50):
        if h.listener.stats.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    assert h.listener.stats.open_connections == 0 and h.listener.stats.connections == 1


async def test_idle_close_stores_an_unfinished_frame_as_truncated(harness):
    h = await harness(idle_timeout_s=0.3)
    r, w = await asyncio.open_connection("127.0.0.1", h.listener.port)
    w.write(b"\x0b" + siu("S12", control="HALF-1")[:60])
    await w.drain()
    assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()
    for _ in range(100):
        if h.rows():
            break
        await asyncio.sleep(0.02)
    ((_, status, error),) = h.rows()
    assert status == "failed" and error.startswith("truncated frame")


async def test_half_close_after_sending_still_gets_every_ack(harness):
    h = await harness()
    r, w = await asyncio.open_connection("127.0.0.1", h.listener.port)
    w.write(b"".join(frame(siu("S12", control=f"HC-{i}")) for i in range(50)))
    w.write_eof()
    buf = await asyncio.wait_for(r.read(), 20)  # everything, then the server closes
    assert [msa(a)[2] for a in split_acks(buf)] == [f"HC-{i}" for i in range(50)]
    w.close()


async def test_slow_reader_does_not_grow_server_memory(harness):
    """A peer that sends without reading its ACKs: the server stops reading (TCP pushes back)
    once its write buffer is past the high-water mark; nothing queues without bound."""
    h = await harness()
    body = siu("S12", control="SR-0")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: a small, fixed window
    sock.connect(("127.0.0.1", h.listener.port))
    sock.setblocking(False)
    sent = 0  # frames handed to the socket (the last one maybe partly)
    pending = b""
    stalled_at = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stalled_at is None:
        if not pending:
            pending = frame(body.replace(b"|SR-0|", f"|SR-{sent}|".encode()))
            sent += 1
        try:
            pending = pending[sock.send(pending):]
        except BlockingIOError:
            await asyncio.sleep(0.2)  # maybe the server is only catching up
            try:
                pending = pending[sock.send(pending):]
            except BlockingIOError:
                conns = h.connections()
                if conns and conns[0].write_paused:  # the server stopped reading because nobody reads the ACKs,
                    stalled_at = sent  # not only while its stores commit (longer on PostgreSQL): then send on
        if sent % 50 == 0:
            await asyncio.sleep(0)
    assert stalled_at is not None, "the server kept reading although nobody read the ACKs"
    (conn,) = h.connections()
    assert conn.read_paused and conn.write_paused
    buffered = conn.transport.get_write_buffer_size()
    assert buffered < 64 * 1024 + h.listener.max_inflight * 1024  # high-water mark + one round of ACKs
    assert len(conn.slots) <= h.listener.max_inflight + 200
    # now read everything: every message sent is answered, in order
    sock.setblocking(True)
    sock.settimeout(20)

    def drain() -> bytes:  # in threads: the server runs on this test's loop
        data = b""
        while data.count(b"\x1c") < stalled_at:
            chunk = sock.recv(1 << 16)
            assert chunk
            data += chunk
        return data

    loop = asyncio.get_running_loop()
    got, _ = await asyncio.gather(loop.run_in_executor(None, drain), loop.run_in_executor(None, sock.sendall, pending))
    assert [msa(a)[2] for a in split_acks(got)] == [f"SR-{i}" for i in range(stalled_at)]
    sock.close()


async def test_full_inbox_queue_holds_frames_in_the_connection(harness):
    h = await harness({"max_queue": 2, "max_batch": 1})
    conns = [await asyncio.open_connection("127.0.0.1", h.listener.port) for _ in range(4)]
    for i, (_, w) in enumerate(conns):
        w.write(b"".join(frame(siu("S12", control=f"Q-{i}-{j}")) for j in range(20)))
    results = await asyncio.gather(*(read_acks(r, 20) for r, _ in conns))
    for i, acks in enumerate(results):
        assert [msa(a)[1:3] for a in acks] == [["AA", f"Q-{i}-{j}"] for j in range(20)]
    assert h.writer.queue_waits > 0
    assert len(h.rows()) == 80
    for _, w in conns:
        w.close()


async def test_connections_beyond_the_limit_are_closed_and_a_freed_slot_is_used(harness):
    # beyond the cap a connection is closed on accept (tests/integration/test_mllp_limits.py has both loops)
    h = await harness(max_connections=1)
    r1, w1 = await asyncio.open_connection("127.0.0.1", h.listener.port)
    w1.write(frame(siu("S12", control="SL-1")))
    assert msa((await read_acks(r1, 1))[0])[2] == "SL-1"
    r2, w2 = await asyncio.open_connection("127.0.0.1", h.listener.port)
    assert await asyncio.wait_for(r2.read(), 5) == b""
    w2.close()
    w1.close()
    for _ in range(100):
        if h.listener.stats.open_connections == 0:
            break
        await asyncio.sleep(0.02)
    r3, w3 = await asyncio.open_connection("127.0.0.1", h.listener.port)
    w3.write(frame(siu("S12", control="SL-3")))
    assert msa((await read_acks(r3, 1))[0])[2] == "SL-3"
    assert h.listener.stats.connections == 2 and h.listener.stats.refused == {"listener connection cap": 1}
    w3.close()


async def test_storage_failure_answers_ar_in_order(harness):
    h = await harness()

    def broken(records):
        raise OSError("disk I/O error")

    h.writer.write_batch = broken  # type: ignore[method-assign]
    r, w = await asyncio.open_connection("127.0.0.1", h.listener.port)
    w.write(frame(siu("S12", control="F-1")) + frame(siu("S12", control="F-2")))
    acks = await read_acks(r, 2)
    assert [msa(a)[1:3] for a in acks] == [["AR", "F-1"], ["AR", "F-2"]]
    assert h.listener.stats.acks == {"reject": 2}
    w.close()


async def test_ack_only_after_commit_and_before_ack_hook(harness):
    events: list[str] = []
    h = await harness({"fault_hook": events.append}, fault_hook=events.append)
    r, w = await asyncio.open_connection("127.0.0.1", h.listener.port)
    w.write(frame(siu("S12", control="O-1")))
    await read_acks(r, 1)
    assert events == ["inbox.before_commit", "inbox.after_commit", "mllp.before_ack"]
    w.close()
