"""The MLLP listener under hostile peers, on real loopback sockets, under both event loops:
connection caps that close on accept (per listener, per address), the frame deadline, the
buffered-byte caps, junk coalesced into one record per burst, complete non-HL7 frames answered
AE until ``max_junk_frames``, then the connection closed as not an HL7 peer."""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from middleware.listeners.mllp_framing import frame
from tests.integration.conftest_mllp import BOTH_LOOPS, closed_by_server, mllp, msa, read_acks  # noqa: F401
from tests.support.hl7msgs import siu

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BOTH_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


async def test_connection_beyond_the_listener_cap_is_closed_on_accept(mllp):
    """uvloop reads a transport paused in connection_made: the old cap let each extra connection
    push an unfinished frame into memory. Beyond the cap the connection is closed at once."""
    h = await mllp(max_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", h.port) for _ in range(2)]
    await h.wait_open(2)
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        w.write(b"\x0bMSH|^~\\&|" + b"X" * 1_000_000)  # an unfinished 1 MB frame
        await w.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass
    assert await closed_by_server(r)
    assert h.listener.stats.refused == {"listener connection cap": 1}
    assert h.listener.stats.buffered_bytes < 300_000  # nothing of the refused frame is held
    assert h.listener.stats.open_connections == 2
    for _, w2 in held:
        w2.close()
    w.close()


async def test_per_address_cap_refuses_one_address_and_serves_another(mllp):
    h = await mllp(max_connections_per_address=2)
    mine = [await asyncio.open_connection("127.0.0.1", h.port) for _ in range(2)]
    await h.wait_open(2)
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    assert await closed_by_server(r)
    assert h.listener.stats.refused == {"per-address connection cap": 1}
    # a sender at another address is served while 127.0.0.1 is at its cap
    r2, w2 = await asyncio.open_connection("127.0.0.1", h.port, local_addr=("127.0.0.2", 0))
    w2.write(frame(siu("S12", control="PA-1")))
    assert msa((await read_acks(r2, 1))[0])[1:3] == ["AA", "PA-1"]
    # a freed connection frees its address's slot
    mine[0][1].close()
    await h.wait_open(2)
    r3, w3 = await asyncio.open_connection("127.0.0.1", h.port)
    w3.write(frame(siu("S12", control="PA-2")))
    assert msa((await read_acks(r3, 1))[0])[1:3] == ["AA", "PA-2"]
    for _, x in [*mine, (r, w), (r2, w2), (r3, w3)]:
        x.close()


async def test_drip_fed_frame_is_closed_at_the_frame_deadline_not_kept_alive_by_each_byte(mllp):
    """One byte every 0.1 s resets an idle timer forever; the frame deadline counts from the first byte."""
    h = await mllp(frame_deadline_s=0.6)
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    data = frame(siu("S12", control="DRIP-1"))
    t0 = time.monotonic()
    closed_at = None
    for b in data:
        try:
            w.write(bytes([b]))
            await w.drain()
        except (ConnectionResetError, BrokenPipeError):
            closed_at = time.monotonic()
            break
        await asyncio.sleep(0.1)
        if r.at_eof() or w.transport.is_closing():
            closed_at = time.monotonic()
            break
    if closed_at is None:
        assert await closed_by_server(r, 3)
        closed_at = time.monotonic()
    assert 0.5 < closed_at - t0 < 2.5
    assert sum(h.listener.stats.closed.values()) == 1
    rows = await h.wait_rows(1)
    assert [row[1] for row in rows] == ["failed"] and rows[0][2].startswith("truncated frame")
    # a sender that completes its frames is not affected, however long the connection lives
    r2, w2 = await asyncio.open_connection("127.0.0.1", h.port)
    for i in range(4):
        w2.write(frame(siu("S12", control=f"OK-{i}")))
        assert msa((await read_acks(r2, 1))[0])[2] == f"OK-{i}"
        await asyncio.sleep(0.25)
    w.close()
    w2.close()


async def test_junk_only_connection_is_closed_at_the_deadline_and_kept_as_one_record(mllp):
    h = await mllp(frame_deadline_s=0.5)
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    w.write(b"\x16\x03\x01\x02\x00\x01\x00")  # a TLS ClientHello on the plain port
    assert await closed_by_server(r, 5)
    (row,) = await h.wait_rows(1)
    assert row[1] == "failed" and "outside MLLP frames" in row[2] and row[4] == b"\x16\x03\x01\x02\x00\x01\x00"
    w.close()


async def test_unfinished_frames_beyond_the_total_buffer_cap_are_closed(mllp):
    cap = 600_000
    h = await mllp(max_buffered_bytes_total=cap)
    conns = [await asyncio.open_connection("127.0.0.1", h.port) for _ in range(6)]
    chunk = b"\x0bMSH|^~\\&|" + b"Y" * 250_000  # unfinished frames of 250 kB each
    for _, w in conns:
        try:
            w.write(chunk)
            await w.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
    await asyncio.sleep(0.5)
    peak = h.listener.stats.buffered_bytes
    assert peak <= cap + 300_000  # the cap plus at most one read in progress
    closed = sum(h.listener.stats.closed.values())
    assert closed >= 3, h.listener.stats.closed
    # a real sender is still answered
    r, w = await asyncio.open_connection("127.0.0.1", h.port, local_addr=("127.0.0.3", 0))
    w.write(frame(siu("S12", control="CAP-1")))
    assert msa((await read_acks(r, 1))[0])[1:3] == ["AA", "CAP-1"]
    for _, x in [*conns, (r, w)]:
        x.close()


async def _read_answers(r: asyncio.StreamReader, out: list[bytes]) -> None:
    """Collect answers until the server closes (queued answers are read before a reset)."""
    try:
        while True:
            out.append((await r.readuntil(b"\x1c\r")).strip(b"\x0b\x1c\r"))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass


async def test_one_megabyte_of_random_bytes_makes_at_most_max_junk_frames_plus_one_records(mllp):
    """~890 rows before (one per stray 0x0B). Each complete non-HL7 frame is answered AE after its
    burst's record is stored; after max_junk_frames (16 by default) the connection is closed as
    not an HL7 peer and what it sent after the last one is one more record."""
    h = await mllp()
    assert h.listener.config.max_junk_frames == 16
    data = random.Random(11).randbytes(1_000_000)
    assert data.count(b"\x0b") > 3000
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    answers: list[bytes] = []
    reader = asyncio.create_task(_read_answers(r, answers))
    w.write(frame(siu("S12", control="J-1")))
    try:
        for i in range(0, len(data), 65536):
            w.write(data[i:i + 65536])
            await asyncio.wait_for(w.drain(), 10)
    except (ConnectionResetError, BrokenPipeError):
        pass  # closed by the server
    await asyncio.wait_for(reader, 10)
    w.close()
    assert msa(answers[0])[1:3] == ["AA", "J-1"]
    junk_answers = answers[1:]
    assert len(junk_answers) == 16, len(junk_answers)  # one per complete non-HL7 frame, no more
    assert all(msa(a)[1:3] == ["AE", ""] and b"\rERR|" in a and b"not an HL7 v2 message" in a for a in junk_answers)
    assert h.listener.stats.closed == {"not an HL7 peer (max_junk_frames)": 1}
    await h.wait_open(0)
    rows = await h.wait_rows(18)
    await asyncio.sleep(0.2)
    rows = h.rows()
    assert len(rows) == 1 + 16 + 1, [(c, s, e, r[:40]) for c, s, e, _, r in rows]  # J-1, 16 junk frames, the rest
    junk = rows[1:]
    assert all(row[1] == "failed" and "outside MLLP frames" in row[2] and len(row[4]) <= 65536 for row in junk)
    assert sum("answered AE" in row[2] for row in junk) == 16 and "answered AE" not in junk[-1][2]
    assert data.startswith(b"".join(row[4] for row in junk[:16]))  # stored unchanged, in order
    # a real sender on a new connection is answered
    r2, w2 = await asyncio.open_connection("127.0.0.1", h.port)
    w2.write(frame(siu("S12", control="J-2")))
    assert msa((await read_acks(r2, 1))[0])[1:3] == ["AA", "J-2"]
    w2.close()


async def test_a_megabyte_of_bytes_outside_frames_is_one_record_and_real_frames_keep_their_answers(mllp):
    h = await mllp()
    data = random.Random(11).randbytes(1_000_000).replace(b"\x0b", b"")  # no start block: no frame
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    w.write(frame(siu("S12", control="J-1")))
    for i in range(0, len(data), 65536):
        w.write(data[i:i + 65536])
        await w.drain()
    w.write(frame(siu("S12", control="J-2")))
    await w.drain()
    acks = await read_acks(r, 2)
    assert [msa(a)[1:3] for a in acks] == [["AA", "J-1"], ["AA", "J-2"]]  # nothing for the junk
    w.close()
    await h.wait_rows(3)
    await asyncio.sleep(0.2)
    rows = h.rows()
    assert len(rows) == 3, [(c, s, e, r[:40]) for c, s, e, _, r in rows]
    (junk,) = [row for row in rows if row[2] and "outside MLLP frames" in row[2]]
    assert junk[4] == data[:65536] and f"{len(data)} bytes" in junk[2]
    assert h.listener.stats.junk_bytes == len(data) and h.listener.stats.closed == {}


async def test_a_connection_closed_mid_frame_stores_at_most_64_kib_of_it(mllp):
    h = await mllp(frame_deadline_s=0.5)
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    w.write(b"\x0b" + siu("S12", control="BIGHALF") + b"NTE|1||" + b"Z" * 500_000)
    await w.drain()
    assert await closed_by_server(r, 5)
    (row,) = await h.wait_rows(1)
    assert row[1] == "failed" and len(row[4]) == 65536 and "first 65536 kept" in row[2]
    assert row[4].startswith(b"MSH|")
    w.close()
