"""Property-based fuzzing of the MLLP framer and of a running listener on a real socket:
every complete frame gets exactly one answer, in order (its HL7 ACK, or AE with an empty
MSA-2 when it is not HL7), bytes outside frames get none, and every byte is stored unchanged."""
from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.config.sources import Sources
from middleware.listeners.mllp import MllpListener
from middleware.listeners.mllp_framing import Junk, MllpFramer, frame, looks_like_hl7
from middleware.normalize.hl7_batch import is_batch
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboxWriter
from tests.fuzz.strategies import mllp_payloads
from tests.support.hostile_hl7 import check_batch_answer, check_single_answer, msa

_junk = st.binary(max_size=8).map(lambda b: b.replace(b"\x0b", b""))  # bytes outside frames (no start block)


@settings(max_examples=300)
@given(st.lists(mllp_payloads(), max_size=6), st.lists(_junk, min_size=7, max_size=7), st.data())
def test_framer_yields_each_frame_once_whatever_the_reads(payloads: list[bytes], junk: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(j + frame(p) for j, p in zip(junk, payloads)) + junk[-1]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = MllpFramer(max_size=1 << 20)
    items: list[object] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        items += framer.feed(stream[a:b])
    items += framer.finish("closed")
    # one answered item per complete frame, in order: the payload when it is HL7, else the
    # junk burst it ends (the bytes outside frames before it, then the frame, unchanged)
    answered = [i for i in items if not isinstance(i, Junk) or i.frame]
    assert len(answered) == len(payloads)
    for p, item in zip(payloads, answered):
        if looks_like_hl7(p):
            assert item == p
        else:
            assert isinstance(item, Junk) and item.frame
            # the CR after the end block is the frame's when it came in the same read (it is optional)
            whole = item.data.removesuffix(b"\r").endswith(b"\x0b" + p + b"\x1c")
            assert whole or (item.dropped and len(frame(p)) > framer.junk_keep)
    for item in items:  # bytes outside frames: kept unchanged (a burst's first bytes), never answered
        if isinstance(item, Junk):
            assert item.data in stream and item.size >= len(item.data)
    assert not framer.busy()


async def _exchange(payloads: list[bytes], db: Path) -> list[bytes]:
    engine = make_engine(f"sqlite:///{db}", synchronous="OFF")
    init_db(engine)
    writer = InboxWriter(engine)
    task = asyncio.create_task(writer.run())
    listener = MllpListener(sources=Sources([]), writer=writer, port=0)
    await listener.start()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", listener.port)
        w.write(b"".join(frame(p) for p in payloads))
        await w.drain()
        out = [(await asyncio.wait_for(r.readuntil(b"\x1c\r"), 10))[1:-2] for _ in payloads]
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 10) == b""  # nothing more than one answer per frame
        w.close()
        return out
    finally:
        await listener.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        engine.dispose()


# SQLite only: a fresh database per example (synchronous=OFF) keeps 25 examples fast; this fuzzes framing and
# answers, and the inbox writer on PostgreSQL runs in tests/integration/test_mllp_*.py
@pytest.mark.sqlite_only
@settings(max_examples=25)
@given(st.lists(mllp_payloads(), min_size=1, max_size=8))
def test_a_running_listener_answers_every_frame_and_stores_its_bytes(payloads: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "f.db"
        answers = asyncio.run(_exchange(payloads, db))
        for raw, ans in zip(payloads, answers):
            if not looks_like_hl7(raw):  # a complete frame that is not HL7: AE, ERR, no MSH-10 to echo
                assert msa(ans)[1:3] == ["AE", ""] and b"\rERR|" in ans
            elif is_batch(raw):
                check_batch_answer(raw, ans)
            else:
                check_single_answer(raw, ans)
        con = sqlite3.connect(db)
        try:
            stored = [bytes(raw) for (raw,) in con.execute("SELECT raw FROM inbound_message")]
        finally:
            con.close()
        hashes = {hashlib.sha256(raw).hexdigest(): raw for raw in stored}
        for raw in payloads:
            if looks_like_hl7(raw):
                assert hashes[hashlib.sha256(raw).hexdigest()] == raw
            else:  # its junk record: the frame as received (nothing outside frames was sent here)
                assert any(s in (frame(raw)[:65536], frame(raw)[:-1][:65536]) for s in stored)
