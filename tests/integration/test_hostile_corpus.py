"""The hostile corpus (tests/fixtures/hostile), replayed on every run through the ingest path
with real storage, over a real MLLP socket and over POST /hl7v2: each input gets exactly one
answer (the pinned one where pinned), MSA-2 = MSH-10 whenever it is readable, the bytes are
stored unchanged, and nothing answered AA then fails in normalization."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.config.sources import Sources
from middleware.listeners.hl7_ingest import ingest_hl7
from middleware.listeners.mllp import MllpListener
from middleware.listeners.mllp_framing import frame, looks_like_hl7
from middleware.normalize.hl7_batch import is_batch
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboxWriter
from sqlalchemy.engine import Engine
from tests.support.dbrows import fetch
from tests.support.hl7msgs import siu
from tests.support.hostile_hl7 import (Case, check_batch_answer, check_single_answer, corpus, msa,
                                   normalizes_without_error)
from tests.support.server import start_in_process

pytestmark = pytest.mark.anyio
CASES = corpus()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stored(db: Engine) -> list[tuple[bytes, str, str | None, str | None]]:
    return [(bytes(r[0]), r[1], r[2], r[3]) for r in
            fetch(db, "SELECT raw, status, message_type, sha256 FROM inbound_message ORDER BY id")]


def check_case(case: Case, answer: bytes) -> None:
    if is_batch(case.raw):
        assert case.code in ("batch", None)
        check_batch_answer(case.raw, answer)
        return
    fields = check_single_answer(case.raw, answer)
    if case.code:
        assert fields[1] == case.code, (case.name, fields)
    if case.msa2 is not None:
        assert fields[2] == case.msa2, (case.name, fields)


def check_storage(db: Engine, cases: list[Case], *, mllp: bool = False) -> None:
    rows = stored(db)
    by_hash = {h: raw for raw, _s, _t, h in rows}
    for case in cases:  # every input's bytes are stored unchanged (a batch as its envelope)
        if mllp and not looks_like_hl7(case.raw):  # a junk record: the frame as received, start and end blocks too
            assert any(raw == frame(case.raw) and s == "failed" for raw, s, _t, _h in rows), case.name
            continue
        assert by_hash.get(hashlib.sha256(case.raw).hexdigest()) == case.raw, case.name
    for raw, status, mtype, _h in rows:
        if status == "received":
            normalizes_without_error(raw)


@pytest.fixture
async def writer(db_url: str) -> Any:
    db = engine = make_engine(db_url)
    init_db(engine)
    w = InboxWriter(engine)
    task = asyncio.create_task(w.run())
    yield db, w
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    engine.dispose()


async def test_corpus_through_the_ingest_path(writer: Any) -> None:
    db, w = writer
    for case in CASES:
        ans = await ingest_hl7(case.raw, channel="http", port=None, sources=Sources([]), writer=w)
        assert ans.ack is not None
        check_case(case, ans.ack)
    check_storage(db, CASES)


async def test_corpus_over_a_real_mllp_socket_pipelined(writer: Any) -> None:
    db, w = writer
    listener = MllpListener(sources=Sources([]), writer=w, port=0)
    await listener.start()
    try:
        r, wr = await asyncio.open_connection("127.0.0.1", listener.port)
        wr.write(b"".join(frame(c.raw) for c in CASES))  # all pipelined on one connection
        await wr.drain()
        answers = [(await asyncio.wait_for(r.readuntil(b"\x1c\r"), 20))[1:-2] for _ in CASES]
        for case, ans in zip(CASES, answers):  # one answer per frame, in order (non-HL7 frames too)
            check_case(case, ans)
        wr.write_eof()
        assert await asyncio.wait_for(r.read(), 20) == b""  # and nothing more
        wr.close()
    finally:
        await listener.close()
    check_storage(db, CASES, mllp=True)


async def test_poison_frame_does_not_stop_the_frames_behind_it(writer: Any) -> None:
    db, w = writer
    listener = MllpListener(sources=Sources([]), writer=w, port=0)
    await listener.start()
    try:
        r, wr = await asyncio.open_connection("127.0.0.1", listener.port)
        poison = b"\xff\xfe\rMSH|x\r"  # issue 11, "What was seen" 1: the connection dropped here
        wr.write(frame(poison) + b"".join(frame(siu("S12", control=f"BEHIND-{i}", appt=f"F{i}")) for i in range(3)))
        await wr.drain()
        acks = [(await asyncio.wait_for(r.readuntil(b"\x1c\r"), 10))[1:-2] for _ in range(4)]
        assert [msa(a)[1:3] for a in acks] == [["AE", ""], ["AA", "BEHIND-0"], ["AA", "BEHIND-1"], ["AA", "BEHIND-2"]]
        assert b"\rERR|" in acks[0]
        wr.close()
    finally:
        await listener.close()
    rows = stored(db)
    assert rows[0][0] == poison and rows[0][1] == "failed"
    assert [s for _r, s, _t, _h in rows[1:]] == ["received"] * 3


def test_corpus_over_post_hl7v2(tmp_path: Path, pipeline_mappings: Path, db_url: str) -> None:
    srv = start_in_process(db_url, pipeline_mappings, run_worker=False)
    try:
        for case in CASES:
            if len(case.raw) > 1_000_000:
                continue
            r = httpx.post(srv.http_url + "/hl7v2", content=case.raw, timeout=20)
            assert r.status_code == 200, (case.name, r.status_code)  # the poison frame got 500 before
            check_case(case, r.content)
    finally:
        srv.stop()
