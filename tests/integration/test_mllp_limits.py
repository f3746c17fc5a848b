"""The MLLP listener under hostile peers, on real loopback sockets, under both event loops:
connection caps that close on accept (per listener, per address), the frame deadline, the
buffered-byte caps, junk coalesced into one record per burst."""
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


async def test_one_megabyte_of_random_bytes_is_one_record_and_real_frames_keep_their_answers(mllp):
    h = await mllp()
    data = random.Random(11).randbytes(1_000_000)
    assert data.count(b"\x0b") > 3000
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    w.write(frame(siu("S12", control="J-1")))
    for i in range(0, len(data), 65536):
        w.write(data[i:i + 65536])
        await w.drain()
    w.write(b"\x1c\r")  # end whatever random frame is open
    w.write(frame(siu("S12", control="J-2")))
    await w.drain()
    acks = await read_acks(r, 2)
    assert [msa(a)[2] for a in acks] == ["J-1", "J-2"]
    w.close()
    rows = await h.wait_rows(3)
    await asyncio.sleep(0.2)
    rows = h.rows()
    assert len(rows) <= 4, [(c, s, e, r[:40]) for c, s, e, _, r in rows]  # not ~890 (one per stray 0x0B)
    junk = [row for row in rows if row[2] and "outside MLLP frames" in row[2]]
    assert junk and sum(len(row[4]) for row in junk) <= 2 * 65536
    assert h.listener.stats.junk_bytes >= 990_000


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
