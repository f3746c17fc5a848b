"""Benchmark 1 of issue 16: MLLP ingest in the default deployment, beside its peers in the same run.

One command: ``python bench/default_deployment.py [--runs 3] [--messages 2000] [--seconds 5] [--profile OUT]``.

Servers, each its own process, runs interleaved (careloop, in-process, no-worker, python-hl7, careloop, ...):
* ``careloop``: ``careloop serve`` WITH its worker (serve's child process: the default), the shipped rules (quiet hours off),
  a local webhook receiver (``careloop sink``, own process); SIU^S12 (fires a reminder at once: one
  signed webhook) and ADT^A03 (a pending ED follow-up) alternate (``bench/deploy.py``);
* ``in-process``: the same with ``CARELOOP_WORKER_PROCESS=false`` (the worker in serve's own threads, the
  model before the worker process);
* ``no-worker``: the same with ``serve --no-worker`` (ingest only: careloop's own reference);
* ``no-spool``: ``careloop`` with ``CARELOOP_INGEST_SPOOL=false`` (ingest commits to the main database, queueing
  for SQLite's one writer behind the worker: the code before the ingest spool); ``no-worker-spool``:
  ``--no-worker`` with the spool forced on (what the spool costs when nothing else writes);
* ``python-hl7``: python-hl7's bare asyncio MLLP server (parse + ACK, stores nothing).

Per run and server: messages/s on 1 connection (waiting for each ACK) and on 8 connections; ACK
latency p50/p99 on one connection at a steady 200 msg/s, once with processing idle (backlog
drained first) and once right after the 8-connection run while processing is saturated (the
backlog is printed). Every careloop message is fsync'd before its ACK (SQLite WAL synchronous=FULL);
the disk's fdatasync latency and the load average are printed beside the figures. ``--profile``
records py-spy (all threads, idle included) of the worker-running server during one 1-connection
run and prints the hot functions.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_seconds, fsync_latency_ms, machine, percentile, run_load, stop  # noqa: E402
from deploy import backlog, counts, mix, start_careloop, start_sink, wait_drained  # noqa: E402

SERVERS = ("careloop", "in-process", "no-worker", "python-hl7")


def start_peer(which: str) -> tuple[subprocess.Popen[bytes], int]:
    from common import PY, free_port, wait_port

    port = free_port()
    proc = subprocess.Popen([PY, str(REPO / "bench" / "peers.py"), which, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 30, proc)
    return proc, port


async def steady_acks(port: int, messages: list[bytes], rate: float) -> list[float]:
    """Send at ``rate`` msg/s on one connection (each after the previous ACK); ACK latencies in ms."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lat: list[float] = []
    t0 = time.perf_counter()
    for k, body in enumerate(messages):
        await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        s = time.perf_counter()
        writer.write(b"\x0b" + body + b"\x1c\r")
        await reader.readuntil(b"\x1c\r")
        lat.append((time.perf_counter() - s) * 1000)
    writer.close()
    return lat


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000, help="messages per throughput run")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each steady-rate latency run")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--profile", type=Path, help="py-spy raw output of careloop (worker) during one 1-connection run")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. main): also run its `serve` with the worker, as 'baseline'")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    if args.baseline:
        servers.insert(1, "baseline")
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-default-"))
    print(f"# MLLP ingest in the default deployment  {machine()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    fsync_before = fsync_latency_ms(work)
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    dbs: dict[str, Path] = {}
    sink, hook = start_sink(work)
    rates: dict[str, dict[int, list[float]]] = {s: {1: [], 8: []} for s in servers}
    cpu: dict[str, dict[int, list[float]]] = {s: {1: [], 8: []} for s in servers}
    lat_all: dict[str, dict[str, list[float]]] = {s: {"idle": [], "saturated": [], "closed1": []} for s in servers}
    p_runs: dict[str, dict[str, list[tuple[float, float]]]] = {s: {"idle": [], "saturated": []} for s in servers}
    sat_backlog: list[int] = []
    profile_text = ""
    seq = 0
    try:
        for s in servers:
            if s == "careloop":
                p, port, dbs[s] = start_careloop(work, hook, worker=True, name="worker")
                procs[s] = (p, port)
            elif s == "baseline":
                p, port, dbs[s] = start_careloop(work, hook, worker=True, name="baseline", repo=args.baseline.resolve())
                procs[s] = (p, port)
            elif s == "in-process":
                p, port, dbs[s] = start_careloop(work, hook, worker=True, name="inprocess", env={"CARELOOP_WORKER_PROCESS": "false"})
                procs[s] = (p, port)
            elif s == "no-worker":
                p, port, dbs[s] = start_careloop(work, hook, worker=False, name="noworker")
                procs[s] = (p, port)
            elif s == "no-spool":  # the worker process, ingest committing to the main database (before the spool)
                p, port, dbs[s] = start_careloop(work, hook, worker=True, name="nospool", env={"CARELOOP_INGEST_SPOOL": "false"})
                procs[s] = (p, port)
            elif s == "no-worker-spool":  # ingest only, committing to the spool (moved by a thread of serve)
                p, port, dbs[s] = start_careloop(work, hook, worker=False, name="noworkerspool",
                                                 env={"CARELOOP_INGEST_SPOOL": "true"})
                procs[s] = (p, port)
            else:
                procs[s] = start_peer(s)
        n_steady = int(args.rate * args.seconds)
        for run in range(args.runs):
            for s in servers:
                proc, port = procs[s]
                tag = f"R{run}{s[:2]}"
                if s in ("careloop", "baseline", "in-process", "no-spool"):
                    wait_drained(dbs[s], 300)
                lat = asyncio.run(steady_acks(port, mix(tag + "i", n_steady, seq), args.rate))
                seq += n_steady
                lat_all[s]["idle"] += lat
                p_runs[s]["idle"].append((statistics.median(lat), percentile(lat, 99)))
                for conns in (1, 8):
                    msgs = mix(f"{tag}c{conns}", args.messages, seq)
                    seq += args.messages
                    c0 = cpu_seconds(proc.pid)
                    if conns == 1 and s == "careloop" and args.profile and run == 0:
                        sys.path.insert(0, str(REPO / "bench"))
                        from pyspy import py_spy_while

                        profile_text, r = py_spy_while(proc.pid, lambda p=port, m=msgs: run_load(p, m, 1),  # type: ignore[misc]
                                                       args.profile, top=30)
                    else:
                        r = run_load(port, msgs, conns)
                    rates[s][conns].append(r.rate)
                    cpu[s][conns].append(100 * (cpu_seconds(proc.pid) - c0) / r.seconds)
                    if conns == 1:
                        lat_all[s]["closed1"] += r.latencies_ms
                    extra = ""
                    if conns == 1:
                        extra = f"  ACK p50 {percentile(r.latencies_ms, 50):.2f} ms p99 {percentile(r.latencies_ms, 99):.2f} ms"
                    print(f"run {run + 1} {s:10s} {conns} conn: {r.rate:8,.0f} msg/s  server CPU {cpu[s][conns][-1]:3.0f}%{extra}",
                          flush=True)
                bl = backlog(dbs[s]) if s in ("careloop", "baseline", "no-spool") else 0
                lat = asyncio.run(steady_acks(port, mix(tag + "s", n_steady, seq), args.rate))
                seq += n_steady
                lat_all[s]["saturated"] += lat
                p_runs[s]["saturated"].append((statistics.median(lat), percentile(lat, 99)))
                if s == "careloop":
                    sat_backlog.append(bl)
                print(f"run {run + 1} {s:10s} ACK at {args.rate:.0f} msg/s: idle p50 {p_runs[s]['idle'][-1][0]:.2f} / p99 "
                      f"{p_runs[s]['idle'][-1][1]:.2f} ms; after the 8-conn run p50 {p_runs[s]['saturated'][-1][0]:.2f} / p99 "
                      f"{p_runs[s]['saturated'][-1][1]:.2f} ms"
                      + (f" (backlog {bl} at its start)" if s in ("careloop", "baseline", "no-spool") else ""),
                      flush=True)
        drain = wait_drained(dbs["careloop"], 600) if "careloop" in dbs else 0.0
        time.sleep(2.0)
        final = counts(dbs["careloop"]) if "careloop" in dbs else {}
    finally:
        for p, _ in procs.values():
            stop(p)
        stop(sink)
    fsync_after = fsync_latency_ms(work)
    print()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (the machine is shared: read ratios, not absolutes)")
    print(f"fdatasync latency of the database's disk (write 4 KiB + fdatasync, median of 200): {fsync_before:.3f} ms before, "
          f"{fsync_after:.3f} ms after")
    print("careloop: SQLite WAL synchronous=FULL, every message committed and fsync'd before its ACK")
    if final:
        print(f"careloop (worker) rows at the end (drained {drain:.1f} s after the last run): {json.dumps(final, sort_keys=True)}")
    med: dict[str, dict[int, float]] = {s: {c: statistics.median(v) for c, v in d.items() if v} for s, d in rates.items()}
    for s in servers:
        for conns in (1, 8):
            v = rates[s][conns]
            print(f"{s:10s} {conns} conn: {statistics.median(v):8,.0f} msg/s (min {min(v):,.0f}, max {max(v):,.0f}, n={len(v)})"
                  f"  server CPU {statistics.median(cpu[s][conns]):3.0f}%")
        for k in ("idle", "saturated", "closed1"):
            vals = lat_all[s][k]
            label = {"idle": f"steady {args.rate:.0f}/s, processing idle", "saturated": f"steady {args.rate:.0f}/s, backlog draining",
                     "closed1": "1 conn as fast as ACKs come"}[k]
            print(f"{s:10s} ACK latency ({label}): p50 {percentile(vals, 50):.2f} ms, p99 {percentile(vals, 99):.2f} ms, "
                  f"max {max(vals):.2f} ms (n={len(vals)})")
    if sat_backlog:
        print(f"careloop backlog (received, unprocessed) at the start of each saturated run: {sat_backlog}")
    targets: list[str] = []
    if "careloop" in med and "python-hl7" in med:
        r1 = med["careloop"][1] / med["python-hl7"][1]
        targets.append(f"careloop (worker) / python-hl7, 1 conn: {r1:.2f}x (target >= 1x) {'MET' if r1 >= 1 else 'NOT MET'}")
        r8p = med["careloop"][8] / med["python-hl7"][8]
        targets.append(f"careloop (worker) / python-hl7, 8 conn: {r8p:.2f}x")
    if "careloop" in med and "no-worker" in med:
        r8 = med["careloop"][8] / med["no-worker"][8]
        targets.append(f"careloop (worker) / careloop --no-worker, 8 conn: {r8:.2f} (target >= 0.80) {'MET' if r8 >= 0.8 else 'NOT MET'}")
        r1n = med["careloop"][1] / med["no-worker"][1]
        targets.append(f"careloop (worker) / careloop --no-worker, 1 conn: {r1n:.2f}")
    if "careloop" in med and "in-process" in med:
        for c in (1, 8):
            targets.append(f"careloop (worker process) / worker in serve's threads (--worker-in-process), {c} conn: "
                           f"{med['careloop'][c] / med['in-process'][c]:.2f}x")
    if "careloop" in med and "baseline" in med:
        for c in (1, 8):
            ratio = med["careloop"][c] / med["baseline"][c]
            targets.append(f"careloop (worker) / baseline (worker, {args.baseline}), {c} conn: {ratio:.2f}x")
    if "careloop" in lat_all:
        for k in ("idle", "saturated"):
            vals = lat_all["careloop"][k]
            p50, p99 = percentile(vals, 50), percentile(vals, 99)
            ok = p50 < 5 and p99 < 20
            targets.append(f"careloop (worker) ACK at {args.rate:.0f}/s ({k}): p50 {p50:.2f} ms (< 5), p99 {p99:.2f} ms (< 20) "
                           f"{'MET' if ok else 'NOT MET'}  [fdatasync {max(fsync_before, fsync_after):.3f} ms]")
    for t in targets:
        print(t)
    if profile_text:
        print("\npy-spy of careloop (worker) during the first 1-connection run:\n" + profile_text)
    summary: dict[str, object] = {"machine": machine(), "fsync_ms": [fsync_before, fsync_after], "rates": rates, "median": med,
                                  "latency_runs": p_runs, "backlog": sat_backlog, "final": final, "targets": targets}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
