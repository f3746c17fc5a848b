"""Benchmark 4: the scheduler with many pending triggers.

One command: ``python bench/scheduler_scale.py [--pending 1000000] [--due 20000] [--runs 5]``.

Stores ``--pending`` triggers due in the future plus ``--due`` already due (each for its
own synthetic patient key, so the fire-time checks — opt-out, suppression, caps — run
their indexed queries), then per run: starts ``careloop serve`` on that SQLite file and
reports time from process start to ``/healthz`` answering, the firing rate of the due
triggers (fired rows over time, read from the database), and the server's peak RSS.
Triggers have no destinations, so this measures the scheduler alone.
"""
from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, REPO, free_port, machine, rss_mb, spread, stop  # noqa: E402


def fill(db: Path, pending: int, due: int, now: float) -> None:
    sys.path.insert(0, str(REPO))
    from middleware.storage.db import init_db, make_engine

    eng = make_engine(f"sqlite:///{db}")
    init_db(eng)
    eng.dispose()
    con = sqlite3.connect(db)
    cols = ("rule_id, ruleset_version, name, purpose, destinations, patient_key, resource_key, origin_key, due_at,"
            " status, payload, created_at, updated_at, message_kind")

    def rows(n: int, offset: int, due_at: float):  # type: ignore[no-untyped-def]
        for i in range(offset, offset + n):
            yield ("bench-rule", "bench", "bench_trigger", "care-coordination", "", f"bench|P{i}", f"Appointment/b{i}",
                   f"bench|{i}", due_at + (i % 1000) * 1e-3, "pending", "{}", now, now, "bench")
    con.executemany(f"INSERT INTO \"trigger\" ({cols}) VALUES ({','.join('?' * 14)})", rows(pending, 0, now + 30 * 86400))
    con.executemany(f"INSERT INTO \"trigger\" ({cols}) VALUES ({','.join('?' * 14)})", rows(due, pending, now - 60))
    con.commit()
    con.close()


def reset_due(db: Path, pending: int, now: float) -> None:
    con = sqlite3.connect(db)
    con.execute("UPDATE \"trigger\" SET status = 'pending', fired_at = NULL, due_at = ? WHERE id > ?", (now - 60, pending))
    con.commit()
    con.close()


def fired(db: Path) -> int:
    con = sqlite3.connect(db, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM \"trigger\" WHERE status <> 'pending' AND rule_id = 'bench-rule'").fetchone()[0])
    finally:
        con.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--due", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="careloop-bench-sched-"))
    db = tmp / "careloop.db"
    t0 = time.time()
    fill(db, args.pending, args.due, time.time())
    print(f"# scheduler  {machine()}")
    print(f"stored {args.pending:,} future + {args.due:,} due triggers in {time.time() - t0:.1f}s; SQLite WAL synchronous=FULL")
    starts, rates, rsss = [], [], []
    for run in range(args.runs):
        reset_due(db, args.pending, time.time())
        http, mllp = free_port(), free_port()
        t_start = time.perf_counter()
        proc = subprocess.Popen([PY, "-m", "middleware", "serve", "--http-port", str(http), "--mllp-port", str(mllp),
                                 "--database-url", f"sqlite:///{db}", "--mappings", str(REPO / "mappings")],
                                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
            starts.append(time.perf_counter() - t_start)
            t1, peak = time.perf_counter(), 0.0
            n0 = fired(db)
            deadline = t1 + 300
            while time.perf_counter() < deadline:
                peak = max(peak, rss_mb(proc.pid))
                n = fired(db)
                if n >= args.due:
                    break
                time.sleep(0.2)
            dt = time.perf_counter() - t1
            rates.append((n - n0) / dt)
            rsss.append(peak)
            print(f"run {run + 1}: serving after {starts[-1]:.2f}s; fired {n - n0:,} due triggers in {dt:.1f}s = {rates[-1]:,.0f}/s;"
                  f" peak RSS {peak:.0f} MB", flush=True)
        finally:
            stop(proc)
    print(f"time to serving: median {sorted(starts)[len(starts) // 2]:.2f}s (min {min(starts):.2f}, max {max(starts):.2f})  target < 3 s")
    print(f"firing rate: {spread(rates)} /s  target >= 2,000/s")
    print(f"peak RSS: {spread(rsss)} MB  target < 300 MB  (rows already stored: {args.pending + args.due:,} triggers)")


if __name__ == "__main__":
    main()
