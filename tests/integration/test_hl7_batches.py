"""HL7 batches end to end: over a real MLLP socket, POST /hl7v2, `careloop send` and `careloop
explain`. Every message is stored before the one response batch is written."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.config.sources import Hl7Settings, Source, Sources
from middleware.listeners.mllp import MllpListener
from middleware.listeners.mllp_framing import frame
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboxWriter
from sqlalchemy.engine import Engine
from tests.support.dbrows import fetch
from tests.conftest import REPO
from tests.support.hl7msgs import adt, siu
from tests.support.server import start_in_process

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def batch(*messages: bytes, count: int | None = None, bhs11: str = "BATCH-1", file: bool = False) -> bytes:
    body = f"BHS|^~\\&|SCHEDSYS|HOSP|CARELOOP|CL|20240501120000||||{bhs11}\r".encode() + b"".join(messages)
    body += f"BTS|{len(messages) if count is None else count}\r".encode()
    if file:
        body = b"FHS|^~\\&|SCHEDSYS|HOSP|CARELOOP|CL|20240501120000||||FILE-1\r" + body + b"FTS|1\r"
    return body


def segs(data: bytes) -> list[list[str]]:
    return [s.split("|") for s in data.decode().split("\r") if s]


def rows(engine: Engine) -> list[tuple[Any, ...]]:
    return fetch(engine, "SELECT control_id, status, message_type FROM inbound_message ORDER BY id")


async def listen(db_url: str, sources: Sources, listener_kw: dict[str, Any] | None = None,
                 **kw: Any) -> tuple[Engine, InboxWriter, MllpListener, asyncio.Task[None]]:
    engine = make_engine(db_url)
    init_db(engine)
    writer = InboxWriter(engine, **kw)
    task = asyncio.create_task(writer.run())
    listener = MllpListener(sources=sources, writer=writer, port=0, **(listener_kw or {}))
    await listener.start()
    return engine, writer, listener, task


async def close(writer: InboxWriter, listener: MllpListener, task: asyncio.Task[None]) -> None:
    await listener.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    writer.engine.dispose()


async def test_batch_over_mllp_gets_one_response_batch_after_every_message_is_stored(db_url: str) -> None:
    # max_batch=2: the batch's five records need three commits; the answer waits for the last
    db, writer, listener, task = await listen(db_url, Sources([]), max_batch=2)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", listener.port)
        no_pv1 = b"\r".join(s for s in adt("A01", control="BM-3").split(b"\r") if not s.startswith(b"PV1"))
        data = batch(siu("S12", control="BM-1", appt="F1"), siu("S12", control="BM-2", appt="F2"), no_pv1, count=4)
        w.write(frame(data) + frame(siu("S12", control="AFTER", appt="F9")))
        await w.drain()
        first = (await asyncio.wait_for(r.readuntil(b"\x1c\r"), 10))[1:-2]
        stored = rows(db)  # read as soon as the response arrived
        out = segs(first)
        assert out[0][0] == "BHS" and out[0][11] == "BATCH-1"
        assert [s[1:3] for s in out if s[0] == "MSA"] == [["AA", "BM-1"], ["AA", "BM-2"], ["AE", "BM-3"]]
        assert out[-1][0] == "BTS" and out[-1][1] == "3" and "BTS-1 says 4" in out[-1][2]
        assert [c for c, _s, t in stored if t != "BATCH"][:3] == ["BM-1", "BM-2", "BM-3"]
        assert [(c, s) for c, s, t in stored if t == "BATCH"] == [("BATCH-1", "ignored")]
        second = (await asyncio.wait_for(r.readuntil(b"\x1c\r"), 10))[1:-2]
        assert b"MSA|AA|AFTER" in second  # the frame behind the batch answered after it, in order
        w.close()
    finally:
        await close(writer, listener, task)


async def test_negative_acks_only_when_the_source_says_so(db_url: str) -> None:
    src = Source(name="default", hl7=Hl7Settings(batch_acks="errors"))
    db, writer, listener, task = await listen(db_url, Sources([src]))
    try:
        r, w = await asyncio.open_connection("127.0.0.1", listener.port)
        w.write(frame(batch(siu("S12", control="N-1", appt="F1"), siu("S12", control="N-2", appt="F2"))))
        await w.drain()
        out = segs((await asyncio.wait_for(r.readuntil(b"\x1c\r"), 10))[1:-2])
        assert [s[0] for s in out] == ["BHS", "BTS"] and out[-1][1] == "0"  # all accepted: an empty response batch
        w.close()
    finally:
        await close(writer, listener, task)
    assert len(rows(db)) == 3


async def test_batch_larger_than_the_frame_limit_uses_the_batch_limit(db_url: str) -> None:
    db, writer, listener, task = await listen(db_url, Sources([]))
    listener.max_message_bytes = 4096  # frames; a batch frame has its own (16 MiB) limit
    try:
        r, w = await asyncio.open_connection("127.0.0.1", listener.port)
        msgs = [siu("S12", control=f"L-{i}", appt=f"F{i}") for i in range(20)]
        data = batch(*msgs)
        assert len(data) > 4096
        w.write(frame(data) + frame(siu("S12", control="BIG", appt="FX") + b"Z" * 5000))
        await w.drain()
        out = segs((await asyncio.wait_for(r.readuntil(b"\x1c\r"), 10))[1:-2])
        assert [s[2] for s in out if s[0] == "MSA"] == [f"L-{i}" for i in range(20)]
        single = (await asyncio.wait_for(r.readuntil(b"\x1c\r"), 10))[1:-2]
        assert b"MSA|AE|BIG" in single and b"exceeds" in single  # a single message keeps the frame limit
        w.close()
    finally:
        await close(writer, listener, task)


async def test_batch_limits_belong_to_each_listener(db_url: str) -> None:
    """The limits come from each listener's settings (no process-wide value): a listener allowing
    2 messages per batch refuses a batch of 3 whole, while another in the same process takes it."""
    db, writer, strict, task = await listen(db_url, Sources([]), {"max_batch_messages": 2})
    lenient = MllpListener(sources=Sources([]), writer=writer, port=0)
    await lenient.start()
    data = batch(*(siu("S12", control=f"Q-{i}", appt=f"F{i}") for i in range(3)))
    try:
        answers = []
        for listener in (strict, lenient):
            r, w = await asyncio.open_connection("127.0.0.1", listener.port)
            w.write(frame(data))
            await w.drain()
            answers.append((await asyncio.wait_for(r.readuntil(b"\x1c\r"), 10))[1:-2])
            w.close()
    finally:
        await lenient.close()
        await close(writer, strict, task)
    assert b"3 messages exceeds the 2-message batch limit" in answers[0]
    assert [s[1:3] for s in segs(answers[1]) if s[0] == "MSA"] == [["AA", f"Q-{i}"] for i in range(3)]
    assert sum(1 for c, status, _ in rows(db) if c and c.startswith("Q-") and status == "received") == 3


def test_batch_over_http_send_and_explain(tmp_path: Path, pipeline_mappings: Path, db_url: str) -> None:
    srv = start_in_process(db_url, pipeline_mappings, run_worker=False)
    try:
        data = batch(siu("S12", control="H-1", appt="F1"), siu("S12", control="H-2", appt="F2"), file=True)
        r = httpx.post(srv.http_url + "/hl7v2", content=data, timeout=20)
        out = segs(r.content)
        assert r.status_code == 200 and out[0][0] == "FHS" and out[0][11] == "FILE-1" and out[-1] == ["FTS", "1"]
        assert [s[1:3] for s in out if s[0] == "MSA"] == [["AA", "H-1"], ["AA", "H-2"]]
        f = tmp_path / "batch.hl7"
        f.write_bytes(batch(siu("S12", control="C-1", appt="F3"), siu("S12", control="C-2", appt="F4")).replace(b"\r", b"\n"))
        sent = subprocess.run([sys.executable, "-m", "middleware", "send", str(f), "--port", str(srv.mllp_port)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert sent.returncode == 0, sent.stderr
        assert "batch, 2 ACK(s) back" in sent.stdout and "MSA|AA|C-1" in sent.stdout and "MSA|AA|C-2" in sent.stdout
        poison = tmp_path / "poison.hl7"
        poison.write_bytes(b"\xff\xfe\rMSH|x\r")
        bad = subprocess.run([sys.executable, "-m", "middleware", "send", str(poison), "--port", str(srv.mllp_port)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
        assert bad.returncode == 1 and "poison.hl7: AE" in bad.stdout and "Traceback" not in bad.stderr
    finally:
        srv.stop()
    ex = subprocess.run([sys.executable, "-m", "middleware", "explain", str(f), "--json", "--mappings", str(pipeline_mappings)],
                        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert ex.returncode == 0, ex.stderr  # JSON decode error before
    doc = json.loads(ex.stdout)
    assert [e["input"] for e in doc["events"]] == [f"{f}#1", f"{f}#2"]
    assert all(e["resource"]["resourceType"] == "Appointment" for e in doc["events"])
