"""Benchmark 3 of issue 16: a burst of ``--rate`` messages/s for ``--seconds`` over 8 connections
into the default deployment (``careloop serve`` with its worker, shipped rules, a local webhook
receiver), counted end to end.

One command: ``python bench/bursts.py [--rate 1000] [--seconds 120] [--conns 8]``.

Each connection sends its share at a fixed schedule (message k at ``t0 + k/rate``), waiting for
each ACK before the next (a late ACK delays that connection's next sends; the achieved rate is
printed). Every second it prints: messages ACKed, ACK p50/p99/max of that second, and the
processing lag (messages stored but not processed yet, and the age of the oldest). Afterwards:
the time to drain the backlog (processed) and to deliver every webhook, then the accounting:
every message stored exactly once, processed once, and each SIU's reminder delivered exactly
once (the receiver's webhook ids and contact keys: each SIU is a new patient; none missing, none twice).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fsync_latency_ms, machine, percentile, send_on_schedule, stop  # noqa: E402
from deploy import counts, mix, sink_received, start_careloop, start_sink, wait_drained  # noqa: E402


def lag(db: Path) -> tuple[int, float]:
    """(messages stored and not processed yet, age in seconds of the oldest of them)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        n, oldest = con.execute("SELECT count(*), min(received_at) FROM inbound_message WHERE status = 'received'").fetchone()
        return int(n), (time.time() - float(oldest)) if oldest else 0.0
    finally:
        con.close()


async def drive(port: int, messages: list[bytes], rate: float, conns: int, db: Path) -> dict[int, list[float]]:
    """Send on a schedule over ``conns`` connections; ACK latencies by second since the start."""
    per_sec: dict[int, list[float]] = collections.defaultdict(list)
    t0 = time.perf_counter()
    stop_report = asyncio.Event()

    async def report() -> None:
        sec = 0
        while not stop_report.is_set():
            await asyncio.sleep(max(0.0, t0 + sec + 1 - time.perf_counter()))
            lat = per_sec.get(sec, [])
            n, age = await asyncio.to_thread(lag, db)
            print(f"t={sec + 1:4d}s  acked {len(lat):5d}  ACK p50 {percentile(lat, 50):7.2f} ms  p99 {percentile(lat, 99):7.2f} ms"
                  f"  max {max(lat) if lat else float('nan'):7.2f} ms  | processing lag: {n:6d} messages, oldest {age:6.2f} s",
                  flush=True)
            sec += 1

    rep = asyncio.create_task(report())
    await asyncio.gather(*(send_on_schedule(port, messages, rate, conns, c, t0, per_sec) for c in range(conns)))
    stop_report.set()
    await asyncio.sleep(0)
    rep.cancel()
    return per_sec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--conns", type=int, default=8)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-bursts-"))
    print(f"# bursts: {args.rate:.0f} msg/s for {args.seconds:.0f} s over {args.conns} connections  {machine()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; fdatasync {fsync_latency_ms(work):.3f} ms"
          " (write 4 KiB + fdatasync, median of 200)", flush=True)
    sink, hook = start_sink(work)
    proc, port, db = start_careloop(work, hook, worker=True, name="bursts")
    n = int(args.rate * args.seconds)
    tag = "X"
    messages = mix(tag, n)
    try:
        t0 = time.perf_counter()
        per_sec = asyncio.run(drive(port, messages, args.rate, args.conns, db))
        sent_s = time.perf_counter() - t0
        print(f"sent and ACKed {n:,} in {sent_s:.1f} s ({n / sent_s:,.0f} msg/s achieved)", flush=True)
        drain = wait_drained(db, 3600)
        print(f"backlog drained (every message processed) {drain:.1f} s after the last ACK", flush=True)
        want = n // 2 + n % 2  # one reminder per SIU
        t1 = time.perf_counter()
        got: list[dict[str, object]] = []
        while time.perf_counter() - t1 < 1800:
            got = [r for r in sink_received(hook) if r.get("type") == "appointment_reminder"]
            if len(got) >= want:
                break
            time.sleep(1.0)
        print(f"webhooks delivered {len(got):,}/{want:,} {drain + time.perf_counter() - t1:.1f} s after the last ACK", flush=True)
        time.sleep(2.0)
        got = [r for r in sink_received(hook) if r.get("type") == "appointment_reminder"]
        if got and os.environ.get("BURSTS_SHOW_ONE"):
            print(json.dumps(got[0], indent=1))
        final = counts(db)
    finally:
        stop(proc)
        stop(sink)
    all_lat = [x for v in per_sec.values() for x in v]
    worst = max(per_sec.items(), key=lambda kv: percentile(kv[1], 99))
    print()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machine); fdatasync after "
          f"{fsync_latency_ms(work):.3f} ms")
    print(f"ACK latency over the whole burst: p50 {percentile(all_lat, 50):.2f} ms, p99 {percentile(all_lat, 99):.2f} ms, "
          f"max {max(all_lat):.2f} ms (n={len(all_lat):,}); worst second t={worst[0] + 1}s p99 {percentile(worst[1], 99):.2f} ms")
    secs_over = sum(1 for v in per_sec.values() if percentile(v, 99) >= 100)
    print(f"seconds with ACK p99 >= 100 ms: {secs_over} of {len(per_sec)} "
          f"(target: none) {'MET' if secs_over == 0 else 'NOT MET'}")
    # end-to-end accounting
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute("SELECT control_id, count(*) FROM inbound_message GROUP BY control_id").fetchall()
    con.close()
    stored = {c: k for c, k in rows}
    sent_ids = {f"{tag}{'S' if i % 2 == 0 else 'A'}{i}" for i in range(n)}
    missing = sent_ids - stored.keys()
    doubled = [c for c, k in stored.items() if k != 1]
    hook_ids = [str(r.get("webhook_id")) for r in got]
    # each SIU is a new patient: its reminder's contact key names it (a pseudonym, no identifier)
    patients = collections.Counter(str(r.get("contact_key")) for r in got)
    print(f"stored: {len(stored):,} distinct control ids of {n:,} sent; missing {len(missing)}, stored twice {len(doubled)}")
    print(f"rows: {json.dumps(final, sort_keys=True)}")
    dup_hooks = len(hook_ids) - len(set(hook_ids))
    dup_appts = sum(k - 1 for k in patients.values() if k > 1)
    ok = not missing and not doubled and len(got) == want == len(patients) and not dup_hooks and not dup_appts
    print(f"webhooks: {len(got):,} for {want:,} SIU messages; duplicate webhook ids {dup_hooks}, "
          f"patients notified twice {dup_appts}, distinct patients {len(patients):,}; "
          f"{'NOTHING LOST OR DOUBLED' if ok else 'MISMATCH'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
