"""Benchmark 4 of issue 16: PostgreSQL, ``careloop serve --no-worker`` plus 1 and then 2 ``careloop worker``
processes; benchmarks 1-3 on each configuration, CPU per message per process, the scaling from 1 to 2 workers.

One command: ``python bench/postgres_workers.py [--postgres URL] [--workers 1,2] [--messages 1000] [--seconds 5]
[--pipeline-messages 1000] [--burst-seconds 20] [--burst-rate 1000]``; the server defaults to
``CARELOOP_TEST_POSTGRES_URL``. Each configuration gets a fresh database (dropped at the end), its own
``careloop sink`` (a local receiver verifying Standard Webhooks signatures, own process) and the shipped
rules with quiet hours off (``bench/deploy.py``). Per configuration, in order:

1. **Ingest** (benchmark 1): ACK p50/p99 on one connection at a steady ``--rate`` msg/s for ``--seconds``
   (processing idle at its start), then ``--messages`` messages on 1 and on 8 connections (each waiting for
   its ACK): msg/s, and CPU per message of each process over the run. SIU^S12 (a reminder fires at once)
   and ADT^A03 (a pending ED follow-up) alternate. Then the time until the workers have processed the backlog.
2. **Whole pipeline** (benchmark 2, pieces of ``bench/whole_pipeline.py``): receipt-to-webhook p50/p99 at a
   steady ``--rate`` msg/s, then ``--pipeline-messages`` SIU^S12 on 8 connections: msg/s from the first send
   to the last webhook received, CPU per message per process (``serve``, each worker; each its process tree).
3. **Burst** (benchmark 3, short): ``--burst-rate`` msg/s for ``--burst-seconds`` over 8 connections on a
   fixed schedule: ACK p99 (overall and the worst second), the processing lag every few seconds, the drain
   time, and the end-to-end accounting (every control id stored once; one webhook per SIU, no duplicate
   webhook id or patient), CPU per message per process from the first send to the last webhook.

Every figure is from the same run; the load average and the fdatasync latency are printed beside them.
PostgreSQL runs with its own settings (``synchronous_commit`` is printed).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, REPO, free_port, fsync_latency_ms, machine, percentile, run_load, send_on_schedule, stop, wait_healthz, wait_port  # noqa: E402
from default_deployment import steady_acks  # noqa: E402
from deploy import dev_secret, mappings_copy, mix, start_sink  # noqa: E402
from whole_pipeline import (  # noqa: E402
    Tree,
    tree_cpu_s,
    cpu_delta,
    fmt_lat,
    loadavg,
    run_phase,
    sink_clear,
    sink_received,
    sink_stats,
    siu_at,
)


# ---------------------------------------------------------------- PostgreSQL

def pg(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as con:
        cur = con.execute(sql, params)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


def fresh_db(url: str, name: str) -> str:
    pg(url, f"DROP DATABASE IF EXISTS {name}")
    pg(url, f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def drop_db(url: str, name: str) -> None:
    try:
        pg(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except Exception as exc:  # noqa: BLE001 - cleanup: say so, go on
        print(f"could not drop {name}: {exc}")


def lag(db: str) -> tuple[int, float]:
    """(messages stored and not processed yet, age in seconds of the oldest)."""
    n, oldest = pg(db, "SELECT count(*), min(received_at) FROM inbound_message WHERE status = 'received'")[0]
    return int(n), (time.time() - float(oldest)) if oldest else 0.0


def wait_processed(db: str, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout and lag(db)[0]:
        time.sleep(0.2)
    return time.perf_counter() - t0


def wait_hooks(hook: str, n: int, timeout: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    got = 0
    while time.perf_counter() - t0 < timeout:
        got = sink_stats(hook)["total"]
        if got >= n:
            break
        time.sleep(0.25)
    return got, time.perf_counter() - t0


# ---------------------------------------------------------------- the deployment

class PgTree(Tree):
    """The deployment's processes plus ``postgres``: the server backends connected to this configuration's
    database (from ``pg_stat_activity``; their /proc CPU; a backend that ends within a phase loses its part;
    the shared WAL writer and checkpointer, used by other sessions too, are not counted)."""

    def __init__(self, admin_url: str, dbname: str) -> None:
        super().__init__()
        self.admin_url, self.dbname = admin_url, dbname
        self.seen: dict[int, float] = {}

    def cpu(self) -> dict[str, float]:
        out = super().cpu()
        rows = pg(self.admin_url, "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.dbname,))
        for (pid,) in rows:
            v = tree_cpu_s(int(pid))
            if v == v:  # not NaN: still there
                self.seen[int(pid)] = v
        out["postgres"] = sum(self.seen.values())
        return out


def start_deployment(work: Path, hook: str, db: str, workers: int, tree: Tree) -> tuple[Tree, int]:
    """``serve --no-worker`` (migrates the fresh database) then ``workers`` ``careloop worker`` processes."""
    maps = mappings_copy(work)
    http, mllp = free_port(), free_port()
    env = {**os.environ, "CARELOOP_WEBHOOK_URL": hook + "/hooks", "CARELOOP_WEBHOOK_SECRET": dev_secret(),
           "CARELOOP_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
    log = (work / f"w{workers}.log").open("ab")
    tree.procs["serve"] = subprocess.Popen(
        [PY, "-m", "middleware", "serve", "--no-worker", "--http-port", str(http), "--mllp-port", str(mllp),
         "--mappings", str(maps), "--database-url", db], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_healthz(http, tree.procs["serve"], 90, log=f"{work}/w{workers}.log")
    wait_port(mllp, 30, tree.procs["serve"])
    ports = []
    for k in range(workers):
        ports.append(free_port())
        tree.procs[f"worker-{k + 1}"] = subprocess.Popen(
            [PY, "-m", "middleware", "worker", "--mappings", str(maps), "--database-url", db, "--metrics-port", str(ports[-1])],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    for k, mport in enumerate(ports):  # each worker up (its metrics endpoint answers) before any load
        wait_port(mport, 120, tree.procs[f"worker-{k + 1}"])
    return tree, mllp


def per_msg(cpu: dict[str, float], n: int) -> str:
    """CPU ms per message of each process; the total of careloop's, then PostgreSQL's backends apart."""
    parts = [f"{k} {1000 * v / max(n, 1):.2f}" for k, v in cpu.items()]
    own = sum(v for k, v in cpu.items() if k != "postgres")
    return ", ".join(parts) + f"; careloop total {1000 * own / max(n, 1):.2f} ms CPU/msg"


# ---------------------------------------------------------------- benchmark 3 (short burst) on PostgreSQL

async def drive(port: int, messages: list[bytes], rate: float, conns: int, db: str, every: int) -> dict[int, list[float]]:
    per_sec: dict[int, list[float]] = collections.defaultdict(list)
    t0 = time.perf_counter()
    done = asyncio.Event()

    async def report() -> None:
        sec = every
        while not done.is_set():
            await asyncio.sleep(max(0.0, t0 + sec - time.perf_counter()))
            acked = sum(len(v) for v in per_sec.values())
            lat = [x for s in range(sec - every, sec) for x in per_sec.get(s, [])]
            n, age = await asyncio.to_thread(lag, db)
            print(f"    t={sec:3d}s acked {acked:6d}  ACK p99 (last {every} s) {percentile(lat, 99):7.1f} ms"
                  f"  | processing lag {n:6d} messages, oldest {age:5.1f} s", flush=True)
            sec += every

    rep = asyncio.create_task(report())
    await asyncio.gather(*(send_on_schedule(port, messages, rate, conns, c, t0, per_sec) for c in range(conns)))
    done.set()
    rep.cancel()
    return per_sec


def burst(port: int, tree: Tree, hook: str, db: str, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.burst_rate * args.burst_seconds)
    messages = mix(tag, n)
    want = n // 2 + n % 2
    c0 = tree.cpu()
    t0 = time.perf_counter()
    per_sec = asyncio.run(drive(port, messages, args.burst_rate, 8, db, args.report_every))
    sent_s = time.perf_counter() - t0
    drain = wait_processed(db, args.drain_timeout)
    got, hooks_s = wait_hooks(hook, want, args.drain_timeout)
    c1 = tree.cpu()
    time.sleep(1.0)
    recs = [r for r in sink_received(hook) if r.get("type") == "appointment_reminder"]
    rows = pg(db, "SELECT control_id, count(*) FROM inbound_message WHERE control_id LIKE %s GROUP BY control_id", (tag + "%",))
    stored = {c: k for c, k in rows}
    sent_ids = {f"{tag}{'S' if i % 2 == 0 else 'A'}{i}" for i in range(n)}
    ids = [str(r.get("webhook_id")) for r in recs]
    patients = collections.Counter(str(r.get("contact_key")) for r in recs)
    all_lat = [x for v in per_sec.values() for x in v]
    worst = max(per_sec.items(), key=lambda kv: percentile(kv[1], 99))
    out = {"n": n, "achieved": n / sent_s, "p50": percentile(all_lat, 50), "p99": percentile(all_lat, 99), "max": max(all_lat),
           "worst_s": worst[0] + 1, "worst_p99": percentile(worst[1], 99),
           "secs_over": sum(1 for v in per_sec.values() if percentile(v, 99) >= 100), "secs": len(per_sec),
           "drain": drain, "hooks_s": drain + hooks_s, "got": got, "want": want,
           "missing": len(sent_ids - stored.keys()), "twice": sum(1 for k in stored.values() if k != 1),
           "dup_hooks": len(ids) - len(set(ids)), "dup_patients": sum(k - 1 for k in patients.values() if k > 1),
           "unverified": sum(1 for r in recs if not r.get("verified")), "cpu": cpu_delta(c0, c1),
           "hook_rate": len(recs) / (sent_s + drain + hooks_s), "processed_rate": n / (sent_s + drain)}
    out["ok"] = (not out["missing"] and not out["twice"] and len(recs) == want == len(patients) and not out["dup_hooks"]
                 and not out["unverified"])
    return out


# ---------------------------------------------------------------- one configuration

def configuration(args: argparse.Namespace, workers: int, work: Path) -> dict[str, Any]:
    name = f"careloop_bench4_{os.getpid()}_w{workers}"
    db = fresh_db(args.postgres, name)
    sink, hook = start_sink(work)
    tree = PgTree(args.postgres, name)
    r: dict[str, Any] = {"workers": workers}
    try:
        tree, port = start_deployment(work, hook, db, workers, tree)
        if workers == int(args.workers.split(",")[0]):  # the first configuration
            sc = pg(db, "SHOW synchronous_commit")[0][0]
            print(f"  PostgreSQL {pg(db, 'SHOW server_version')[0][0]}, synchronous_commit={sc}", flush=True)
        print(f"  processes: {', '.join(f'{k} pid {p.pid}' for k, p in tree.procs.items())}; load {loadavg()}", flush=True)
        c0 = tree.cpu()
        time.sleep(args.idle_seconds)
        idle = {k: 100 * v / args.idle_seconds for k, v in cpu_delta(c0, tree.cpu()).items()}
        r["idle"] = idle
        print("  idle CPU (% of a core, nothing sent): " + ", ".join(f"{k} {v:.1f}" for k, v in idle.items()), flush=True)
        # benchmark 1: ingest
        n_steady = int(args.rate * args.seconds)
        acks = asyncio.run(steady_acks(port, mix(f"W{workers}i", n_steady), args.rate))
        r["ack_idle"] = (percentile(acks, 50), percentile(acks, 99))
        print(f"  [1] ACK at a steady {args.rate:.0f} msg/s, 1 connection, processing idle at the start: "
              f"p50 {r['ack_idle'][0]:.2f} ms, p99 {r['ack_idle'][1]:.2f} ms (n={len(acks)})", flush=True)
        sent = n_steady
        for conns in (1, 8):
            c0 = tree.cpu()
            res = run_load(port, mix(f"W{workers}c{conns}", args.messages), conns)
            cpu = cpu_delta(c0, tree.cpu())
            sent += args.messages
            r[f"ingest{conns}"] = res.rate
            r[f"ingest{conns}_cpu"] = cpu
            print(f"  [1] ingest {conns} conn: {res.rate:7.1f} msg/s ACKed (ACK p50 {percentile(res.latencies_ms, 50):.1f} ms, "
                  f"p99 {percentile(res.latencies_ms, 99):.1f} ms); CPU during the run: {per_msg(cpu, args.messages)}", flush=True)
        bl = lag(db)[0]
        t0 = time.perf_counter()
        c0 = tree.cpu()
        drain = wait_processed(db, args.drain_timeout)
        got, _ = wait_hooks(hook, sent // 2, args.drain_timeout)
        r["ingest_drain"] = (bl, drain)
        print(f"  [1] backlog {bl} after the 8-connection run, processed in {drain:.1f} s "
              f"({bl / drain if drain > 0 else float('nan'):.1f} msg/s); webhooks {got}/{sent // 2} after "
              f"{time.perf_counter() - t0:.1f} s; CPU while draining: {per_msg(cpu_delta(c0, tree.cpu()), bl)}", flush=True)
        sink_clear(hook)
        # benchmark 2: whole pipeline
        seq = 0
        steady = [siu_at(f"W{workers}s", seq + i) for i in range(n_steady)]
        seq += n_steady
        st, _ = run_phase(port, tree, sink, hook, steady, rate=args.rate, conns=1, timeout=args.drain_timeout)
        sink_clear(hook)
        r["pipe_lat"] = (percentile(st.latencies_ms, 50), percentile(st.latencies_ms, 99))
        print(f"  [2] receipt-to-webhook at a steady {args.rate:.0f} msg/s: {fmt_lat(st.latencies_ms)} "
              f"({st.delivered}/{st.sent} delivered)", flush=True)
        msgs = [siu_at(f"W{workers}b", seq + i) for i in range(args.pipeline_messages)]
        seq += len(msgs)
        bu, _ = run_phase(port, tree, sink, hook, msgs, rate=None, conns=8, timeout=args.drain_timeout)
        sink_clear(hook)
        r["pipe_rate"] = bu.rate
        r["pipe_cpu"] = bu.cpu_s
        r["pipe_n"] = bu.sent
        print(f"  [2] whole pipeline, {bu.sent} SIU on 8 connections: {bu.rate:.1f} msg/s end to end ({bu.delivered}/{bu.sent} "
              f"webhooks in {bu.seconds:.1f} s; unverified {bu.unverified}, duplicates {bu.duplicates}); "
              f"CPU {per_msg(bu.cpu_s, bu.sent)}; receiver {1000 * bu.sink_cpu_s / bu.sent:.2f}", flush=True)
        if args.profile and workers == int(args.workers.split(",")[0]):
            # an extra pipeline run under py-spy of worker-1 and serve, not counted (py-spy takes about half a core)
            from pyspy import py_spy_while

            msgs = [siu_at(f"W{workers}p", seq + i) for i in range(args.pipeline_messages)]
            seq += len(msgs)
            wpid = tree.procs["worker-1"].pid
            text, _ = py_spy_while(wpid, lambda: run_phase(port, tree, sink, hook, msgs, rate=None, conns=8,
                                                           timeout=args.drain_timeout), args.profile, top=30)
            sink_clear(hook)
            r["profile"] = text
        # benchmark 3: short burst
        print(f"  [3] burst: {args.burst_rate:.0f} msg/s for {args.burst_seconds:.0f} s over 8 connections", flush=True)
        b = burst(port, tree, hook, db, f"W{workers}X", args)
        r["burst"] = b
        print(f"  [3] sent {b['n']:,} at {b['achieved']:.0f} msg/s achieved; ACK p50 {b['p50']:.1f} ms, p99 {b['p99']:.1f} ms, "
              f"max {b['max']:.1f} ms; worst second t={b['worst_s']}s p99 {b['worst_p99']:.1f} ms; seconds with p99 >= 100 ms: "
              f"{b['secs_over']} of {b['secs']}", flush=True)
        print(f"  [3] drained {b['drain']:.1f} s after the last ACK; webhooks {b['got']}/{b['want']} {b['hooks_s']:.1f} s after it "
              f"({b['processed_rate']:.1f} msg/s processed from the first send); stored: missing {b['missing']}, twice {b['twice']}; "
              f"duplicate webhook ids {b['dup_hooks']}, patients notified twice {b['dup_patients']}, unverified {b['unverified']}: "
              f"{'NOTHING LOST OR DOUBLED' if b['ok'] else 'MISMATCH'}; CPU {per_msg(b['cpu'], b['n'])}", flush=True)
    finally:
        tree.stop()
        stop(sink)
        drop_db(args.postgres, name)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--postgres", default=os.environ.get("CARELOOP_TEST_POSTGRES_URL", ""))
    ap.add_argument("--workers", default="1,2", help="configurations: `careloop worker` processes beside `serve --no-worker`")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each steady-rate run")
    ap.add_argument("--messages", type=int, default=1000, help="messages in each ingest run (1 and 8 connections)")
    ap.add_argument("--pipeline-messages", type=int, default=1000)
    ap.add_argument("--burst-rate", type=float, default=1000.0)
    ap.add_argument("--burst-seconds", type=float, default=20.0)
    ap.add_argument("--report-every", type=int, default=5, help="seconds between lag lines during the burst")
    ap.add_argument("--drain-timeout", type=float, default=900.0)
    ap.add_argument("--profile", type=Path, help="py-spy raw output of worker-1 during an extra pipeline run (first configuration)")
    ap.add_argument("--idle-seconds", type=float, default=3.0, help="idle CPU of each process measured over this long")
    args = ap.parse_args(argv)
    if not args.postgres:
        print("no PostgreSQL: set CARELOOP_TEST_POSTGRES_URL or pass --postgres")
        return 2
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-pgw-"))
    print(f"# benchmark 4: PostgreSQL, serve --no-worker + N careloop worker processes  {machine()}")
    print(f"load average before: {loadavg()}; fdatasync (4 KiB, median of 200) {fsync_latency_ms(work):.3f} ms in {work}", flush=True)
    results = []
    for w in [int(x) for x in args.workers.split(",")]:
        print(f"\n## {w} worker(s)  (load {loadavg()})", flush=True)
        results.append(configuration(args, w, work))
    print()
    print(f"load average after: {loadavg()}; fdatasync {fsync_latency_ms(work):.3f} ms (shared machine: read same-run ratios)")
    shutil.rmtree(work, ignore_errors=True)
    for r in results:
        w = r["workers"]
        pc = r["pipe_cpu"]
        print(f"{w} worker(s): ingest {r['ingest1']:.0f} / {r['ingest8']:.0f} msg/s (1 / 8 conn); ACK at {args.rate:.0f}/s "
              f"p50 {r['ack_idle'][0]:.1f} p99 {r['ack_idle'][1]:.1f} ms; pipeline {r['pipe_rate']:.1f} msg/s, p50/p99 "
              f"{r['pipe_lat'][0]:.0f}/{r['pipe_lat'][1]:.0f} ms at {args.rate:.0f}/s; CPU {per_msg(pc, r['pipe_n'])}; "
              f"burst ACK p99 {r['burst']['p99']:.1f} ms, drain {r['burst']['drain']:.0f} s, "
              f"{'nothing lost or doubled' if r['burst']['ok'] else 'MISMATCH'}")
    for r in results:
        if r.get("profile"):
            print(f"\npy-spy of worker-1 ({r['workers']} worker(s)) during an extra whole-pipeline run (not counted above):\n"
                  + r["profile"])
    if len(results) >= 2:
        a, b = min(results, key=lambda r: r["workers"]), max(results, key=lambda r: r["workers"])
        def drain_rate(r: dict[str, Any]) -> float:
            backlog, secs = r["ingest_drain"]
            return float(backlog / secs) if secs > 0 and backlog else float("nan")

        print(f"scaling {a['workers']} -> {b['workers']} workers: whole pipeline {b['pipe_rate'] / a['pipe_rate']:.2f}x; "
              f"burst processed msg/s (first send to drained) {b['burst']['processed_rate'] / a['burst']['processed_rate']:.2f}x; "
              f"ingest backlog processed "
              f"{drain_rate(b) / drain_rate(a):.2f}x (msg/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
