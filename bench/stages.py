"""Where a message's CPU goes: the pipeline's stages one after another, in one process.

``python bench/stages.py [--messages 1000] [--runs 5] [--database-url URL] [--profile STAGE]``

Stores ``--messages`` SIU^S12 messages (the bench 3 message: an appointment 3 h ahead, a new
patient each, so the shipped ``appointment-reminder-24h`` fires at once) through the real
``InboxWriter``, then runs each stage of a ``Runtime`` to completion on its own: processing
(normalize, state, events, rules, trigger rows), scheduling (fire-time checks, delivery rows)
and delivery (policy, signing, the POST to a local signature-verifying receiver, attempt and
disclosure rows). Prints wall and CPU milliseconds per message for each stage: the sum is the
CPU one message costs end to end, and 1000 / sum is the most one core can carry. With
``--profile process|schedule|deliver [--sort tottime] [--top N]`` prints a cProfile of that stage (the source of the
profiles in docs/benchmarks.md).

With ``--roundtrips`` a first, untimed run counts per message and stage what each stage asks of
the database (``bench/roundtrips.py``): statements, and on PostgreSQL round trips.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from common import machine  # noqa: E402
from pipeline import fresh_postgres, message  # noqa: E402


def one_run(args: argparse.Namespace, run: int, count: bool = False) -> dict[str, tuple[float, float]]:
    from middleware.cli.sink import DEV_WEBHOOK_SECRET
    from middleware.delivery.sink import SinkServer
    from middleware.service import Runtime
    from middleware.settings import Settings
    from middleware.storage.db import synchronous_setting
    from middleware.storage.inbox import InboundRecord

    work = Path(tempfile.mkdtemp(prefix="careloop-stages-"))
    maps = work / "mappings"
    shutil.copytree(REPO / "mappings", maps)
    st = maps / "settings.yaml"
    st.write_text("\n".join(ln for ln in st.read_text().splitlines() if not ln.startswith("quiet_hours:")) + "\nquiet_hours: null\n")
    out: dict[str, tuple[float, float]] = {}
    with SinkServer([DEV_WEBHOOK_SECRET]) as sink:
        os.environ.update(CARELOOP_WEBHOOK_URL=sink.url + "/hooks", CARELOOP_WEBHOOK_SECRET=DEV_WEBHOOK_SECRET)
        db = args.database_url or f"sqlite:///{work}/c.db"
        if db.startswith("postgres"):
            db = fresh_postgres(db, run)
        rt = Runtime(Settings(mappings_dir=str(maps), database_url=db))
        counter = None
        if count:
            from roundtrips import Counter

            counter = Counter(rt.engine)
        if run == 1:
            print(f"storage: {db.split('@')[-1]} {synchronous_setting(rt.engine)}", flush=True)

        async def store() -> None:
            rt.loop = asyncio.get_running_loop()
            task = asyncio.create_task(rt.writer.run())
            base = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=3)
            recs = []
            for i in range(args.messages):
                raw = message(run * 1_000_000 + i, base + timedelta(seconds=i))
                recs.append(rt.writer.store(InboundRecord(source="default", channel="mllp", raw=raw, status="received",
                                                          sha256=hashlib.sha256(raw).hexdigest(), dedup_key=f"k{run}-{i}")))
            await asyncio.gather(*recs)
            task.cancel()

        asyncio.run(store())
        rt.loop = None
        counts = {"ingest": counter.take()} if counter else {}

        def fire() -> int:
            n = 0
            while k := rt.scheduler.fire_due():
                n += k
            return n

        async def deliver() -> int:
            n = 0
            while k := await rt.delivery.run_once():
                n += k
            await rt.delivery.aclose()
            return n

        stages: list[tuple[str, Callable[[], Any]]] = [
            ("process", rt.processor.drain), ("schedule", fire), ("deliver", lambda: asyncio.run(deliver()))]
        for name, fn in stages:
            prof = cProfile.Profile() if args.profile == name and run == 1 else None
            if prof:
                prof.enable()
            t0, c0 = time.perf_counter(), time.process_time()
            n = fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if prof:
                prof.disable()
                pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
                if args.dump:
                    prof.dump_stats(args.dump)
            out[name] = (wall * 1000 / max(n, 1), cpu * 1000 / max(n, 1))
            if counter:
                counts[name] = counter.take()
        got = len([r for r in sink.received() if r["type"] == "appointment_reminder"])
        if got != args.messages:
            print(f"run {run}: only {got}/{args.messages} webhooks received", flush=True)
        rt.engine.dispose()
    shutil.rmtree(work, ignore_errors=True)
    if counter:
        per = args.messages
        print("per message: " + ", ".join(
            f"{k} {c.statements / per:.1f} statements" + (f" / {c.round_trips / per:.1f} round trips" if counter.pg else "")
            for k, c in counts.items()), flush=True)
        return out
    print(f"run {run}: " + ", ".join(f"{k} {w:.2f} ms wall / {c:.2f} ms CPU" for k, (w, c) in out.items()), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--database-url", default="", help="default: a fresh SQLite file; postgresql://...: a fresh database there")
    ap.add_argument("--profile", choices=["process", "schedule", "deliver"], default=None)
    ap.add_argument("--sort", default="cumulative", help="cProfile sort key for --profile (cumulative, tottime)")
    ap.add_argument("--top", type=int, default=40, help="how many cProfile lines --profile prints")
    ap.add_argument("--dump", default="", help="also write the --profile stats to this file (for pstats callers)")
    ap.add_argument("--roundtrips", action="store_true", help="first count statements and round trips in an untimed run")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}; {args.messages} SIU^S12 per run, shipped rules; "
          "CPU is process time (includes the receiver thread during delivery)", flush=True)
    if args.roundtrips:
        one_run(args, 0, count=True)
    runs = [one_run(args, r + 1) for r in range(args.runs)]
    total_cpu = []
    for name in runs[0]:
        walls, cpus = [r[name][0] for r in runs], [r[name][1] for r in runs]
        print(f"{name:8s}: {statistics.median(walls):.2f} ms wall, {statistics.median(cpus):.2f} ms CPU per message "
              f"(CPU {min(cpus):.2f}-{max(cpus):.2f}, n={len(runs)})")
    for r in runs:
        total_cpu.append(sum(c for _, c in r.values()))
    med = statistics.median(total_cpu)
    print(f"total   : {med:.2f} ms CPU per message end to end -> at most {1000 / med:.0f} messages/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
