"""Benchmark 4: the scheduler with many pending triggers.

One command: ``python bench/scheduler_scale.py [--pending 1000000] [--due 20000] [--runs 5] [--peer apscheduler]``.

The peer, interleaved run by run: APScheduler 3 with its SQLAlchemy job store on SQLite
holding the same numbers of future and due jobs (``bench/peers.py apscheduler``).

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


def fill_peer(db: Path, pending: int, due: int, now: float) -> list[tuple[str, float, bytes]]:
    """APScheduler's jobstore with the same shape: ``pending`` jobs in 30 days, ``due`` jobs due;
    returns the due rows (re-inserted before each run)."""
    from peers import apscheduler_jobs

    con = sqlite3.connect(db)
    con.execute("CREATE TABLE apscheduler_jobs (id VARCHAR(191) NOT NULL PRIMARY KEY, next_run_time FLOAT, job_state BLOB NOT NULL)")
    con.execute("CREATE INDEX ix_apscheduler_jobs_next_run_time ON apscheduler_jobs (next_run_time)")
    step = 50_000
    for off in range(0, pending, step):
        con.executemany("INSERT INTO apscheduler_jobs VALUES (?, ?, ?)",
                        apscheduler_jobs(min(step, pending - off), [now + 30 * 86400 + k * 1e-3 for k in range(1000)], off))
    con.commit()
    con.close()
    return apscheduler_jobs(due, [now - 60], pending)


def run_peer(db: Path, due_rows: list[tuple[str, float, bytes]], seconds: float) -> tuple[float, float, float, int]:
    """(time to serving, fired per second, peak RSS MB, fired) for one APScheduler run."""
    con = sqlite3.connect(db)
    con.execute("DELETE FROM apscheduler_jobs WHERE next_run_time < ?", (time.time() + 86400,))
    con.executemany("INSERT INTO apscheduler_jobs VALUES (?, ?, ?)", due_rows)
    con.commit()
    con.close()

    def left() -> int:
        c = sqlite3.connect(db, timeout=30)
        try:
            return int(c.execute("SELECT count(*) FROM apscheduler_jobs WHERE next_run_time < ?", (time.time() + 86400,)).fetchone()[0])
        finally:
            c.close()

    t_start = time.perf_counter()
    proc = subprocess.Popen([PY, str(Path(__file__).resolve().parent / "peers.py"), "apscheduler", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        start = time.perf_counter() - t_start
        t1, peak, n = time.perf_counter(), 0.0, 0
        while time.perf_counter() - t1 < seconds:
            peak = max(peak, rss_mb(proc.pid))
            n = len(due_rows) - left()
            if n >= len(due_rows):
                break
            time.sleep(0.2)
        return start, n / (time.perf_counter() - t1), peak, n
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--due", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--peer", default="apscheduler", help="'' to measure careloop alone")
    ap.add_argument("--peer-seconds", type=float, default=30.0, help="how long each peer run may fire")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="careloop-bench-sched-"))
    db = tmp / "careloop.db"
    t0 = time.time()
    fill(db, args.pending, args.due, time.time())
    print(f"# scheduler  {machine()}")
    print(f"stored {args.pending:,} future + {args.due:,} due triggers in {time.time() - t0:.1f}s; SQLite WAL synchronous=FULL")
    peer_db = tmp / "apscheduler.db"
    peer_due: list[tuple[str, float, bytes]] = []
    if args.peer:
        t0 = time.time()
        peer_due = fill_peer(peer_db, args.pending, args.due, time.time())
        print(f"peer: APScheduler {__import__('apscheduler').__version__} BackgroundScheduler + SQLAlchemyJobStore (SQLite), "
              f"{args.pending:,} future + {args.due:,} due date-triggered jobs stored in {time.time() - t0:.1f}s")
    p_starts, p_rates, p_rsss = [], [], []
    starts, rates, rsss = [], [], []
    for run in range(args.runs):
        if args.peer:  # interleaved with careloop's runs
            st, rate, peak, n = run_peer(peer_db, peer_due, args.peer_seconds)
            p_starts.append(st)
            p_rates.append(rate)
            p_rsss.append(peak)
            print(f"run {run + 1} apscheduler: serving after {st:.2f}s; fired {n:,} due jobs = {rate:,.0f}/s; peak RSS {peak:.0f} MB",
                  flush=True)
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
    if args.peer:
        print(f"apscheduler: time to serving median {sorted(p_starts)[len(p_starts) // 2]:.2f}s; firing rate {spread(p_rates)} /s; "
              f"peak RSS {spread(p_rsss)} MB")
        print(f"careloop / apscheduler firing rate: {sorted(rates)[len(rates) // 2] / max(sorted(p_rates)[len(p_rates) // 2], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
