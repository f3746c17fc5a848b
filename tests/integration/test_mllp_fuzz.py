"""Socket-level fuzz test against a running MLLP listener (seeded, bounded: a fixed number of
connections, well under a minute on both event loops).

Each connection sends a random mix of real HL7 frames, random bytes, stray start and end
blocks and non-HL7 frames, cut into random writes, and ends by reading its ACKs, half-closing,
or aborting midway. Checked: every complete frame gets exactly one answer, in order (read and
half-close modes): a real frame its ACK carrying its MSH-10, a complete non-HL7 frame AE with an
empty MSA-2; bytes outside frames get none. The server stays up and answers a real sender
afterwards, and the stored rows stay bounded (real frames + one junk record per burst, a
complete non-HL7 frame ending its burst)."""
from __future__ import annotations

import asyncio
import os
import random

import pytest

from middleware.listeners.mllp_framing import frame, looks_like_hl7
from tests.integration.conftest_mllp import BOTH_LOOPS, mllp, msa, read_acks  # noqa: F401
from tests.support.hl7msgs import siu

pytestmark = pytest.mark.anyio

CASES = int(os.environ.get("CARELOOP_MLLP_FUZZ_CASES", "400"))
SEED = int(os.environ.get("CARELOOP_MLLP_FUZZ_SEED", "20261206"))


@pytest.fixture(params=BOTH_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


def junk(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 3000))
    if kind == 1:
        return b"\x0b" * rng.randrange(1, 20)  # stray start blocks
    if kind == 2:
        return b"\x0b" + rng.randbytes(rng.randrange(0, 500)).replace(b"\x1c", b"") + b"\x1c\r"  # a non-HL7 frame
    if kind == 3:
        return b"\x1c\r\n\x00" * rng.randrange(1, 4)  # separators
    if kind == 4:
        return b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    return b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + rng.randbytes(40)  # a TLS ClientHello


def junk_answers(data: bytes) -> list[str | None]:
    """The answers a run of junk (starting outside a frame, followed by a real frame's start
    block or the end) is owed, by an independent reading of MLLP: one per complete frame
    (start block, then an end block before any other start block): "" (MSA-2 of the AE) when
    it does not look like HL7, ``None`` (any) in the ~1e-10 case that it does."""
    out: list[str | None] = []
    at = data.find(b"\x0b")
    while at >= 0:
        nxt, end = data.find(b"\x0b", at + 1), data.find(b"\x1c", at + 1)
        if end >= 0 and (nxt < 0 or end < nxt):
            out.append(None if looks_like_hl7(data[at + 1:end]) else "")
        at = nxt
    return out


def stream(rng: random.Random, case: int) -> tuple[bytes, list[str | None], int]:
    """The bytes, the MSA-2 of each answer owed in order, and how many real frames there are."""
    parts: list[bytes] = []
    answers: list[str | None] = []
    real = rng.randrange(1, 8)
    for j in range(real):
        if rng.random() < 0.5:
            parts.append(junk(rng))
            answers += junk_answers(parts[-1])
        control = f"FZ-{case}-{j}"
        answers.append(control)
        # a frame start never hides inside an unfinished junk frame: the real frame's own 0x0B ends it
        parts.append(frame(siu("S12", control=control, appt=f"FZ{case}X{j}")))
    if rng.random() < 0.3:
        parts.append(junk(rng))
        answers += junk_answers(parts[-1])
    return b"".join(parts), answers, real


async def send_in_pieces(w: asyncio.StreamWriter, data: bytes, rng: random.Random) -> None:
    i = 0
    while i < len(data):
        n = rng.choice((1, 3, 17, 256, 1400, 9000, 70000))
        w.write(data[i:i + n])
        i += n
        if rng.random() < 0.3:
            await w.drain()
            await asyncio.sleep(0)
    await w.drain()


async def run_case(port: int, case: int, rng: random.Random) -> tuple[int, int]:
    """One connection; returns the real frames it expects answered and the non-HL7 frames it sends."""
    data, answers, real = stream(rng, case)
    junk_frames = len(answers) - real
    mode = rng.choice(("read", "read", "halfclose", "abort"))
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        if mode == "abort":
            await send_in_pieces(w, data[: rng.randrange(len(data))], rng)
            w.transport.abort()
            return 0, junk_frames
        await send_in_pieces(w, data, rng)
        if mode == "halfclose":
            w.write_eof()
            buf = await asyncio.wait_for(r.read(), 20)
            acks = [p.split(b"\x1c")[0] for p in buf.split(b"\x0b")[1:]]
        else:
            acks = await read_acks(r, len(answers))
        got = [msa(a)[2] for a in acks]
        want = [g if a is None else a for g, a in zip(got, answers)]
        assert got == want and len(got) == len(answers), (case, mode, got, answers)  # each once, in order
        assert all(msa(a)[1] == "AE" and b"\rERR|" in a for a, x in zip(acks, answers) if x == "")
        return real, junk_frames
    finally:
        w.close()


async def test_socket_fuzz_every_real_frame_answered_once_and_the_server_survives(mllp):
    h = await mllp(frame_deadline_s=5.0, max_connections_per_address=1000, max_junk_frames=1000)
    rng = random.Random(SEED)
    answered = junk_frames = 0
    for start in range(0, CASES, 12):  # 12 connections at a time
        seeds = [rng.getrandbits(64) for _ in range(start, min(start + 12, CASES))]
        results = await asyncio.gather(*(run_case(h.port, start + k, random.Random(s)) for k, s in enumerate(seeds)))
        answered += sum(n for n, _ in results)
        junk_frames += sum(j for _, j in results)
    # still up: a real sender is answered
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    w.write(frame(siu("S12", control="AFTER-FUZZ")))
    assert msa((await read_acks(r, 1))[0])[1:3] == ["AA", "AFTER-FUZZ"]
    w.close()
    await h.wait_open(0)
    rows = h.rows()
    real = [row for row in rows if row[0] and row[0].startswith(("FZ-", "AFTER"))]
    assert len(real) >= answered + 1
    # bounded: the real frames sent, plus at most one junk or truncated record per burst (~2 per
    # connection) and one per complete non-HL7 frame (it ends its burst)
    assert len(rows) <= len(real) + 3 * CASES + junk_frames, len(rows)
    assert all(len(row[4]) <= 1_100_000 for row in rows)
    assert h.listener.stats.buffered_bytes == 0
