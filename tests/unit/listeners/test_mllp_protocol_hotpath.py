"""The MLLP hot path's shortcuts give the same answers as the long way round: cached ACK
timestamps, the escape fast path, the inbox's callback API (submit / after_batch / room)."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

from middleware.listeners.hl7_ack import _esc, build_ack
from middleware.normalize.hl7_peek import peek
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter, StoreResult

MSG = b"MSH|^~\\&|EPIC|HOSP|CARELOOP|CL|20240501120000||SIU^S12^SIU_S12|MSG001|P|2.5.1\rSCH|1\rPID|1\r"


def _msh(text: str) -> list[str]:
    return text.split("\r")[0].split("|")


def test_default_timestamp_matches_control_id_and_is_utc():
    p = peek(MSG)
    for _ in range(3):
        f = _msh(build_ack(p, "accept"))
        assert f[6].endswith("+0000") and len(f[6]) == 19
        assert f[9].startswith("CL" + f[6][:14]) and len(f[9]) == 2 + 14 + 6 + 5


def test_explicit_times_in_other_zones_are_formatted_as_given():
    p = peek(MSG)
    t = datetime(2024, 5, 1, 12, 0, 1, 5, tzinfo=timezone(timedelta(hours=2)))
    f = _msh(build_ack(p, "accept", now=t))
    assert f[6] == "20240501120001+0200" and f[9].startswith("CL20240501120001000005")
    naive = datetime(2024, 5, 1, 12, 0, 1)
    assert _msh(build_ack(p, "accept", now=naive))[6] == "20240501120001"


def test_escape_fast_path_and_slow_path():
    assert _esc("PLAIN TEXT", "|", "^~\\&") == "PLAIN TEXT"
    assert _esc("a|b^c~d\\e&f", "|", "^~\\&") == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert _esc("line\r\nnext", "|", "^~\\&") == "line  next"
    assert _esc("a b", " ", "^~\\&") == "a\\F\\b"  # newlines become spaces before escaping


def _rec(i: int, raw: bytes = b"x") -> InboundRecord:
    return InboundRecord(source="default", channel="mllp", raw=raw, sha256=f"{i:064d}", status="received",
                         dedup_key=f"A|B|{i}", ack=b"ACK%d" % i)


def test_submit_callbacks_after_batch_and_room(tmp_path: Path, db_url: str):
    engine = make_engine(db_url)
    init_db(engine)
    writer = InboxWriter(engine, max_queue=3)

    async def main() -> tuple[list[tuple[int, StoreResult]], list[str], list[StoreResult]]:
        answered: list[tuple[int, StoreResult]] = []
        order: list[str] = []
        for i in range(3):  # queued before the commit thread runs: fills the queue
            def done(res: StoreResult, i: int = i) -> None:
                answered.append((i, res))
                order.append(f"done{i}")
                if i == 0:
                    writer.after_batch(lambda: order.append("after"))
            writer.submit(_rec(i), done)
        assert not writer.has_room()
        # a store() now waits for room (backpressure) and is answered once committed
        stores = asyncio.gather(writer.store(_rec(9)), writer.store(_rec(0)))
        await asyncio.sleep(0.05)  # both are waiting for room now
        assert writer.queue_waits == 2
        task = asyncio.create_task(writer.run())
        try:
            late = await asyncio.wait_for(stores, 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return answered, order, list(late)

    answered, order, late = asyncio.run(main())
    assert [i for i, _ in answered] == [0, 1, 2] and all(r.stored and not r.duplicate for _, r in answered)
    assert order.index("after") > order.index("done2")  # after every producer of the batch
    assert writer.queue_waits >= 1
    assert late[0].stored and not late[0].duplicate
    assert late[1].duplicate and late[1].previous_ack == b"ACK0"  # same key and bytes as record 0
    engine.dispose()


def test_storage_failure_answers_every_producer(tmp_path: Path, db_url: str):
    engine = make_engine(db_url)
    init_db(engine)
    writer = InboxWriter(engine)

    def broken(records):
        raise OSError("disk gone")

    writer.write_batch = broken  # type: ignore[method-assign]

    async def main() -> list[StoreResult]:
        task = asyncio.create_task(writer.run())
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(writer.store(_rec(i)) for i in range(5))), 10))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    res = asyncio.run(main())
    assert all(not r.stored and "disk gone" in (r.error or "") for r in res)
    engine.dispose()
