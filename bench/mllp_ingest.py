"""Benchmark 1: MLLP ingest, durable before the ACK, careloop vs python-hl7 vs hl7apy.

One command: ``python bench/mllp_ingest.py [--runs 5] [--messages 4000] [--prefill 0]``.

Each server runs in its own process; this process is the one load client for all of
them (same SIU^S12, a unique MSH-10 per message, request -> wait for the ACK -> next).
Runs are interleaved (careloop, python-hl7, hl7apy, careloop, ...) and reported as
median (min, max) of ``--runs``. careloop runs ``careloop serve --no-worker`` (ingest
only) on SQLite WAL ``synchronous=FULL``; after the timed runs one more run is traced
with ``strace -c`` to count fsync/fdatasync calls per ACK.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PY, REPO, cpu_seconds, free_port, fsync_latency_ms, machine, run_load, siu_message, spread, stop, strace_fsyncs, wait_port,
)

SERVERS = ("careloop", "python-hl7", "hl7apy")


def start_careloop(db: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, http = free_port(), free_port()
    proc = subprocess.Popen(
        [PY, "-m", "middleware", "serve", "--no-worker", "--http-port", str(http), "--mllp-port", str(port),
         "--database-url", f"sqlite:///{db}", "--mappings", str(REPO / "mappings")],
        cwd=db.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**__import__("os").environ, "CARELOOP_LOG_LEVEL": "WARNING"},
    )
    wait_port(port, 60, proc)
    return proc, port


def start_peer(which: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([PY, str(REPO / "bench" / "peers.py"), which, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 30, proc)
    return proc, port


def prefill(db: Path, n: int) -> None:
    """Store ``n`` processed inbound rows directly (the growth benchmark's starting point)."""
    if n <= 0:
        return
    con = sqlite3.connect(db)
    body = siu_message("PREFILL")
    now = time.time()
    rows = ((f"default", "mllp", now, body, "0" * 64, f"SCHEDSYS|HOSP|P{i}", f"P{i}", "SIU^S12^SIU_S12", "processed", 0)
            for i in range(n))
    con.executemany("INSERT INTO inbound_message (source, channel, received_at, raw, sha256, dedup_key, control_id,"
                    " message_type, status, attempts) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    con.close()


def stored(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("SELECT count(*) FROM inbound_message").fetchone()[0])
    finally:
        con.close()


def sync_mode(db: Path) -> str:
    """``PRAGMA synchronous`` as careloop's engine applies it (same ``make_engine`` code path)."""
    sys.path.insert(0, str(REPO))
    from middleware.storage.db import make_engine, synchronous_setting

    eng = make_engine(f"sqlite:///{db}")
    try:
        return synchronous_setting(eng)
    finally:
        eng.dispose()


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--messages", type=int, default=4000, help="messages per run (careloop, python-hl7)")
    ap.add_argument("--hl7apy-messages", type=int, default=300, help="hl7apy reconnects per message: fewer")
    ap.add_argument("--prefill", type=int, default=0, help="rows already stored before the first run")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]

    tmp = Path(tempfile.mkdtemp(prefix="careloop-bench-mllp-"))
    db = tmp / "careloop.db"
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    results: dict[str, dict[int, list[float]]] = {s: {1: [], 8: []} for s in servers}
    client_cpu: dict[str, list[float]] = {s: [] for s in servers}
    server_cpu: dict[str, list[float]] = {s: [] for s in servers}
    seq = 0
    print(f"# MLLP ingest  {machine()}")
    try:
        if "careloop" in servers:
            procs["careloop"] = start_careloop(db)
            prefill(db, args.prefill)
        for s in servers:
            if s != "careloop":
                procs[s] = start_peer(s)
        rows_before = stored(db) if "careloop" in servers else 0
        fsync_before = fsync_latency_ms(tmp)
        for run in range(args.runs):
            for s in servers:
                proc, port = procs[s]
                n = args.hl7apy_messages if s == "hl7apy" else args.messages
                for conns in (1, 8):
                    msgs = [siu_message(f"B{seq + i}", mrn=f"MRN{(seq + i) % 5000:06d}", appt=f"A{seq + i}") for i in range(n)]
                    seq += n
                    c0 = cpu_seconds(proc.pid)
                    r = run_load(port, msgs, conns, reconnect=(s == "hl7apy"))
                    results[s][conns].append(r.rate)
                    client_cpu[s].append(r.client_cpu_pct)
                    server_cpu[s].append(100 * (cpu_seconds(proc.pid) - c0) / r.seconds)
                    print(f"run {run + 1} {s:10s} {conns} conn: {r.rate:8,.0f} msg/s  client CPU {r.client_cpu_pct:3.0f}%"
                          f"  server CPU {server_cpu[s][-1]:3.0f}%", flush=True)
        fsync_per_ack = None
        if "careloop" in servers:
            proc, port = procs["careloop"]
            msgs = [siu_message(f"S{seq + i}", appt=f"S{seq + i}") for i in range(2000)]
            n_fsync, r = strace_fsyncs(proc.pid, lambda: run_load(port, msgs, 8))
            fsync_per_ack = n_fsync / len(msgs) if n_fsync >= 0 else None
            rows_after = stored(db)
            sync = sync_mode(db)
    finally:
        for proc, _ in procs.values():
            stop(proc)

    fsync_after = fsync_latency_ms(tmp)
    summary: dict[str, object] = {"machine": machine(), "rows_before": rows_before,
                                  "fsync_ms": [fsync_before, fsync_after]}
    print()
    print(f"fdatasync latency on the database's disk (median of 200): {fsync_before:.2f} ms before, {fsync_after:.2f} ms after;"
          f" durable-before-ACK ceiling with 8 connections (8 per commit) ~{8000 / max(fsync_before, fsync_after):,.0f} msg/s,"
          f" with 1 connection ~{1000 / max(fsync_before, fsync_after):,.0f} msg/s")
    print(f"rows already stored before the first careloop run: {rows_before:,}")
    if "careloop" in servers:
        print(f"careloop storage: SQLite WAL, PRAGMA synchronous={sync}; rows after: {rows_after:,}")
        if fsync_per_ack is not None:
            print(f"careloop fsync+fdatasync per ACK (strace -f -c, 2,000 messages, 8 connections): {fsync_per_ack:.3f}"
                  f"  -> group commit: ~{1 / fsync_per_ack if fsync_per_ack else 0:.0f} messages per fsync")
        summary.update(sync=sync, fsync_per_ack=fsync_per_ack)
    for s in servers:
        for conns in (1, 8):
            print(f"{s:10s} {conns} conn: {spread(results[s][conns])} msg/s")
        print(f"{s:10s} load-client CPU: {spread(client_cpu[s])} %   server CPU: {spread(server_cpu[s])} %")
    import statistics

    med = {s: {c: statistics.median(v) for c, v in d.items() if v} for s, d in results.items()}
    if "careloop" in med and "python-hl7" in med:
        for conns, target in ((1, 1.0), (8, 4.0)):
            ratio = med["careloop"][conns] / med["python-hl7"][conns]
            print(f"careloop / python-hl7, {conns} conn: {ratio:.2f}x (target >= {target}x) "
                  f"{'MET' if ratio >= target else 'NOT MET'}")
    summary["median"] = med
    summary["runs"] = results
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
