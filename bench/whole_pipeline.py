"""Benchmark 2 of issue 16: the whole pipeline in the default deployment, beside the hand-written bridge.

One command: ``python bench/whole_pipeline.py [--runs 3] [--messages 2000] [--seconds 10] [--rate 200] [--profile OUT]
[--baseline /work/main]``.

Deployments, each in its own processes, runs interleaved (careloop then bridge, then bridge then careloop,
...: the order alternates), a fresh database per run:
* ``careloop``: ``careloop serve`` WITH its worker, on SQLite WAL ``synchronous=FULL``, the shipped
  rules with quiet hours off (``bench/deploy.py``);
* ``baseline`` (with ``--baseline DIR``): ``careloop`` with the code of another checkout, for a
  before/after in the same runs;
* ``bridge``: ``bench/peers.py bridge``, what a developer would hand-write instead: python-hl7's
  asyncio MLLP server, a Standard Webhooks-signed JSON POSTed with one kept-alive httpx client (the
  client careloop delivers with), then the ACK. Nothing stored, no rules, no retry.

Both deliver to the same kind of receiver: ``careloop sink`` in its own process, verifying every
signature. Each message is an SIU^S12 for a new patient booked 3-20 h ahead, so the shipped
``appointment-reminder-24h`` fires at once; its start time (unique per message) comes back in the
webhook's ``appointment_start`` and matches the webhook to the message's send.

Per run and deployment:
* latency at a steady ``--rate`` msg/s for ``--seconds`` on one connection: from each message's send
  to its webhook's arrival at the receiver (p50/p99; the receiver's clock, same host);
* throughput: ``--messages`` messages on ``--conns`` connections (each waiting for its ACK), messages/s
  from the first send to the last webhook received, and the CPU seconds per message of the deployment's
  whole process tree (the server and any children: a future ``serve`` may run its worker as a child)
  over the same interval; the receiver's CPU is printed apart.

Then the ratio careloop / bridge and issue 16's targets (>= 1x the bridge; <= 2.5 ms CPU per message;
p99 < 100 ms at 200 msg/s) as MET / NOT MET. ``bench/stages.py`` gives the per-stage split of the CPU
(one process, each stage run to completion); ``--profile OUT`` records py-spy of careloop's ``serve``
during an extra throughput run after the first (not counted: py-spy takes about half a core) and prints the hot
functions.

The pieces (``Tree``, ``sink_*``, ``steady_pipeline``, ``burst_pipeline``, ``match``) are reused by
``bench/postgres_workers.py`` (benchmark 4).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, REPO, free_port, fsync_latency_ms, machine, percentile, stop, wait_port  # noqa: E402
from deploy import dev_secret, start_careloop, start_sink  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- process-tree CPU (from /proc)

def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children of children included), by scanning /proc."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st:
                kids.setdefault(int(st[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of ``pid``, its reaped children (cutime/cstime) and its live descendants."""
    st = _stat(pid)
    if st is None:
        return float("nan")
    total = sum(int(x) for x in st[11:15])  # utime, stime, cutime, cstime
    for c in descendants(pid):
        cst = _stat(c)
        if cst:
            total += int(cst[11]) + int(cst[12])
    return total / CLK


@dataclass
class Tree:
    """Named root processes of one deployment (e.g. serve, worker-1, worker-2); CPU per process tree."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        return {name: tree_cpu_s(p.pid) for name, p in self.procs.items()}

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            stop(p)


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


# ---------------------------------------------------------------- messages and the receiver

BASE = (datetime.now(timezone.utc) + timedelta(hours=3)).replace(microsecond=0)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S") + "+0000"


def siu_at(tag: str, i: int) -> tuple[int, bytes]:
    """(key, SIU^S12) for a new patient whose appointment starts at ``BASE + i`` seconds: the key (the
    start as epoch seconds) comes back in the webhook's ``appointment_start``. Keep ``i`` under ~60,000
    (the start must stay inside the reminder's 24 h)."""
    start = BASE + timedelta(seconds=i)
    now = datetime.now(timezone.utc)
    end = start + timedelta(minutes=30)
    segs = [
        f"MSH|^~\\&|SCHED|HOSP|CARELOOP|CL|{_ts(now)}||SIU^S12^SIU_S12|{tag}P{i}|P|2.5.1",
        f"SCH|P{tag}{i}^SCHED|{tag}G{i}^SCHED||||FOLLOWUP^Follow-up^LOCAL|||30|MIN|^^30^{_ts(start)}^{_ts(end)}||||||||||||||Booked",
        f"PID|1||MRN{tag}P{i:07d}^^^HOSP^MR||TESTPATIENT^BENCH||19700101|F",
        "RGS|1",
        f"AIS|1||CLINIC^Clinic visit^LOCAL|{_ts(start)}|||30|MIN",
    ]
    return int(start.timestamp()), ("\r".join(segs) + "\r").encode()


def sink_stats(base: str) -> dict[str, int]:
    return dict(httpx.get(base + "/stats", timeout=60).json())


def sink_received(base: str) -> list[dict[str, Any]]:
    return list(httpx.get(base + "/received", timeout=300).json())


def sink_clear(base: str) -> None:
    httpx.delete(base + "/received", timeout=60)


def wait_webhooks(base: str, n: int, timeout: float, poll: float = 0.25) -> tuple[int, float]:
    """Poll the receiver until ``n`` calls arrived (or ``timeout``); (calls, time.time() when seen)."""
    t0 = time.monotonic()
    got = 0
    while time.monotonic() - t0 < timeout:
        got = sink_stats(base)["total"]
        if got >= n:
            break
        time.sleep(poll)
    return got, time.time()


def start_bridge(work: Path, hook_base: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "BRIDGE_WEBHOOK_URL": hook_base + "/hooks", "BRIDGE_WEBHOOK_SECRET": dev_secret()}
    log = (work / "bridge.log").open("wb")
    proc = subprocess.Popen([PY, str(REPO / "bench" / "peers.py"), "bridge", str(port)], cwd=work, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    wait_port(port, 30, proc)
    return proc, port


# ---------------------------------------------------------------- load

async def _send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(b"\x0b" + body + b"\x1c\r")
    await reader.readuntil(b"\x1c\r")


async def steady_pipeline(port: int, msgs: list[tuple[int, bytes]], rate: float, sent: dict[int, float]) -> list[float]:
    """One connection, message k at ``t0 + k/rate`` (after the previous ACK); records each send's wall time
    in ``sent`` by key; returns the ACK latencies (ms)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    acks: list[float] = []
    t0 = time.perf_counter()
    for k, (key, body) in enumerate(msgs):
        await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        sent[key] = time.time()
        s = time.perf_counter()
        await _send(reader, writer, body)
        acks.append((time.perf_counter() - s) * 1000)
    writer.close()
    return acks


async def burst_pipeline(port: int, msgs: list[tuple[int, bytes]], conns: int, sent: dict[int, float]) -> list[float]:
    """``conns`` connections, each sending its share as fast as its ACKs come; ACK latencies (ms)."""
    acks: list[float] = []

    async def one(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for key, body in msgs[c::conns]:
            sent[key] = time.time()
            s = time.perf_counter()
            await _send(reader, writer, body)
            acks.append((time.perf_counter() - s) * 1000)
        writer.close()

    await asyncio.gather(*(one(c) for c in range(conns)))
    return acks


def _key(rec: dict[str, Any]) -> int | None:
    body = rec.get("body") or {}
    start = (body.get("data") or {}).get("appointment_start") if isinstance(body, dict) else None
    if not start:
        return None
    return int(datetime.fromisoformat(str(start).replace("Z", "+00:00")).timestamp())


@dataclass
class Matched:
    latencies_ms: list[float]
    sent_at: list[float]  # wall time of each matched message's send (same order as latencies_ms)
    last_arrival: float  # wall time of the last matched webhook
    matched: int
    unverified: int
    duplicates: int
    unknown: int


def match(records: list[dict[str, Any]], sent: dict[int, float]) -> Matched:
    """Pair each webhook with its message's send (by the appointment start); latency = arrival - send."""
    lat: list[float] = []
    at: list[float] = []
    last = 0.0
    seen: set[int] = set()
    unknown = dup = 0
    for r in records:
        k = _key(r)
        if k is None or k not in sent:
            unknown += 1
            continue
        if k in seen:
            dup += 1
            continue
        seen.add(k)
        got = datetime.fromisoformat(str(r["received_at"])).timestamp()
        last = max(last, got)
        lat.append((got - sent[k]) * 1000)
        at.append(sent[k])
    return Matched(lat, at, last, len(seen), sum(1 for r in records if not r.get("verified")), dup, unknown)


class FsyncCounter:
    """fsync + fdatasync calls of ``pid`` (all its threads) between start() and stop(), by ``perf stat`` on the
    syscall tracepoints (no ptrace, so the process runs at full speed); -1 without perf or its permission."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import shutil

        if shutil.which("perf"):
            self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(self.out), "-e",
                                          "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync", "-p", str(self.pid)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)

    def stop(self) -> int:
        import signal

        if self.proc is None:
            return -1
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        n, ok = 0, False
        for line in self.out.read_text().splitlines() if self.out.exists() else []:
            cols = line.split(",")
            if len(cols) > 2 and cols[2].startswith("syscalls:") and cols[0].strip().isdigit():
                n += int(cols[0])
                ok = True
        return n if ok else -1


@dataclass
class PhaseResult:
    rate: float  # messages/s from the first send to the last webhook
    seconds: float
    cpu_s: dict[str, float]  # per process tree over the phase
    sink_cpu_s: float
    acks_ms: list[float]
    latencies_ms: list[float]
    delivered: int
    sent: int
    unverified: int
    duplicates: int
    sent_at: list[float] = field(default_factory=list)
    fsyncs: int = -1  # fsync/fdatasync calls of the deployment's main process over the phase (-1: not counted)

    def by_second(self, step: float = 2.0) -> str:
        """Median latency of the messages sent in each ``step`` seconds of the phase (is it a floor or a queue?)."""
        if not self.sent_at:
            return ""
        t0 = min(self.sent_at)
        b: dict[int, list[float]] = {}
        for t, v in zip(self.sent_at, self.latencies_ms):
            b.setdefault(int((t - t0) / step), []).append(v)
        return " ".join(f"{statistics.median(v):.0f}" for _, v in sorted(b.items()))

    def cpu_ms_per_msg(self, name: str | None = None) -> float:
        total = sum(self.cpu_s.values()) if name is None else self.cpu_s[name]
        return 1000 * total / max(self.sent, 1)


def run_phase(port: int, tree: Tree, sink: subprocess.Popen[bytes], hook: str, msgs: list[tuple[int, bytes]], *,
              rate: float | None, conns: int, timeout: float, profile: tuple[int, Path] | None = None,
              fsyncs_of: int = 0) -> tuple[PhaseResult, str]:
    """Send ``msgs`` (steady at ``rate`` on one connection, or as fast as ACKs come on ``conns``), wait for
    every webhook, measure. The receiver must be cleared before."""
    sent: dict[int, float] = {}
    counter = FsyncCounter(fsyncs_of, Path(tempfile.gettempdir()) / f"careloop-bench-fsyncs-{os.getpid()}.txt") if fsyncs_of else None
    if counter:
        counter.start()
    c0, s0 = tree.cpu(), tree_cpu_s(sink.pid)
    t0 = time.time()

    def go() -> tuple[list[float], int, float]:
        if rate:
            acks = asyncio.run(steady_pipeline(port, msgs, rate, sent))
        else:
            acks = asyncio.run(burst_pipeline(port, msgs, conns, sent))
        got, seen_at = wait_webhooks(hook, len(msgs), timeout)
        return acks, got, seen_at

    text = ""
    if profile:
        from pyspy import py_spy_while

        text, (acks, got, seen_at) = py_spy_while(profile[0], go, profile[1], top=30)
    else:
        acks, got, seen_at = go()
    c1, s1 = tree.cpu(), tree_cpu_s(sink.pid)
    n_fsyncs = counter.stop() if counter else -1
    m = match(sink_received(hook), sent)
    end = m.last_arrival if m.matched >= len(msgs) else seen_at
    secs = end - t0
    return PhaseResult(m.matched / secs if secs > 0 else float("nan"), secs, cpu_delta(c0, c1), s1 - s0, acks, m.latencies_ms,
                       m.matched, len(msgs), m.unverified, m.duplicates, m.sent_at, n_fsyncs), text


def idle_cpu_pct(tree: Tree, seconds: float) -> float:
    """CPU of the deployment's processes while nothing is sent, in % of one core."""
    if seconds <= 0:
        return 0.0
    c0 = tree.cpu()
    time.sleep(seconds)
    return 100 * sum(cpu_delta(c0, tree.cpu()).values()) / seconds


def fmt_lat(v: list[float]) -> str:
    return f"p50 {percentile(v, 50):.1f} ms, p99 {percentile(v, 99):.1f} ms, max {max(v) if v else float('nan'):.1f} ms (n={len(v)})"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- benchmark 2

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000, help="messages in each throughput run")
    ap.add_argument("--conns", type=int, default=8, help="connections in each throughput run")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each steady-rate latency run")
    ap.add_argument("--warmup", type=int, default=100, help="messages sent (and delivered) before measuring, per deployment")
    ap.add_argument("--idle-seconds", type=float, default=3.0, help="CPU of the idle deployment measured over this long")
    ap.add_argument("--servers", default="careloop,bridge")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the webhooks of one phase")
    ap.add_argument("--profile", type=Path, help="py-spy raw output of careloop's serve during an extra, uncounted throughput run")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. /work/main) run as a third deployment, "
                    "`baseline`, beside careloop in the same runs: a before/after on the same load")
    args = ap.parse_args(argv)
    kinds = [k for k in args.servers.split(",") if k] + (["baseline"] if args.baseline else [])
    work = Path(tempfile.mkdtemp(prefix="careloop-bench-whole-"))
    print(f"# benchmark 2: whole pipeline, careloop serve (worker in process, SQLite) vs the hand-written bridge  {machine()}")
    print(f"load average before: {loadavg()}", flush=True)
    fs0 = fsync_latency_ms(work)
    print(f"fdatasync (write 4 KiB + fdatasync, median of 200) in the database's directory: {fs0:.3f} ms", flush=True)
    print(f"load: per run and deployment, {args.rate:.0f} msg/s for {args.seconds:.0f} s on 1 connection (latency), then "
          f"{args.messages} messages on {args.conns} connections as fast as ACKs come (throughput); after {args.warmup} warm-up "
          "messages; each an SIU^S12 that fires one signed webhook at once; receiver: `careloop sink` (own process, "
          "verifies signatures)", flush=True)
    res: dict[str, list[tuple[PhaseResult, PhaseResult]]] = {k: [] for k in kinds}
    idle: dict[str, list[float]] = {k: [] for k in kinds}
    profile_text = ""
    seq = 0
    n_steady = int(args.rate * args.seconds)
    try:
        for run in range(args.runs):
            # alternate which deployment goes first (the host's load drifts within a run: seen in benchmark 4)
            for kind in (kinds if run % 2 == 0 else kinds[::-1]):
                sink, hook = start_sink(work)
                tree = Tree()
                try:
                    if kind in ("careloop", "baseline"):
                        p, port, _db = start_careloop(work, hook, worker=True, name=f"{kind}{run}",
                                                      repo=args.baseline if kind == "baseline" else REPO)
                        tree.procs["serve"] = p
                    elif kind == "no-spool":  # the same without the ingest spool (the code before it)
                        p, port, _db = start_careloop(work, hook, worker=True, name=f"nospool{run}",
                                                      env={"CARELOOP_INGEST_SPOOL": "false"})
                        tree.procs["serve"] = p
                    else:
                        p, port = start_bridge(work, hook)
                        tree.procs["bridge"] = p
                    warm = [siu_at(f"R{run}{kind[0]}w", seq + i) for i in range(args.warmup)]
                    seq += args.warmup
                    run_phase(port, tree, sink, hook, warm, rate=None, conns=args.conns, timeout=args.timeout)
                    sink_clear(hook)
                    idle[kind].append(idle_cpu_pct(tree, args.idle_seconds))
                    steady_msgs = [siu_at(f"R{run}{kind[0]}s", seq + i) for i in range(n_steady)]
                    seq += n_steady
                    fs_pid = p.pid if kind != "bridge" else 0
                    st, _ = run_phase(port, tree, sink, hook, steady_msgs, rate=args.rate, conns=1, timeout=args.timeout,
                                      fsyncs_of=fs_pid)
                    sink_clear(hook)
                    burst_msgs = [siu_at(f"R{run}{kind[0]}b", seq + i) for i in range(args.messages)]
                    seq += args.messages
                    bu, _ = run_phase(port, tree, sink, hook, burst_msgs, rate=None, conns=args.conns, timeout=args.timeout,
                                      fsyncs_of=fs_pid)
                    if args.profile and kind == "careloop" and run == 0:
                        # an extra throughput run under py-spy, not counted (py-spy at 1 kHz takes about half a core)
                        sink_clear(hook)
                        prof_msgs = [siu_at(f"R{run}{kind[0]}p", seq + i) for i in range(args.messages)]
                        seq += args.messages
                        _, profile_text = run_phase(port, tree, sink, hook, prof_msgs, rate=None, conns=args.conns,
                                                    timeout=args.timeout, profile=(p.pid, args.profile))
                finally:
                    tree.stop()
                    stop(sink)
                res[kind].append((st, bu))
                print(f"run {run + 1} {kind:8s}: steady {args.rate:.0f}/s receipt-to-webhook {fmt_lat(st.latencies_ms)}; "
                      f"(p50 by 2 s of sending: {st.by_second()} ms); ACK p50 {percentile(st.acks_ms, 50):.1f} ms "
                      f"| throughput {bu.rate:6.1f} msg/s end to end "
                      f"({bu.delivered}/{bu.sent} webhooks in {bu.seconds:.1f} s), CPU {bu.cpu_ms_per_msg():.2f} ms/msg "
                      f"(receiver {1000 * bu.sink_cpu_s / bu.sent:.2f} ms/msg); unverified {st.unverified + bu.unverified}, "
                      f"duplicates {st.duplicates + bu.duplicates}; idle CPU {idle[kind][-1]:.1f}% of a core"
                      + (f"; fsyncs per message: steady {st.fsyncs / st.sent:.2f}, throughput {bu.fsyncs / bu.sent:.2f}"
                         if st.fsyncs >= 0 else "") + f"; load {loadavg()}",
                      flush=True)
    finally:
        fs1 = fsync_latency_ms(work)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"load average after: {loadavg()} (shared machine: read same-run ratios, not absolutes); fdatasync {fs0:.3f} ms before, "
          f"{fs1:.3f} ms after")
    med: dict[str, dict[str, float]] = {}
    for kind, rs in res.items():
        rates = [b.rate for _, b in rs]
        cpus = [b.cpu_ms_per_msg() for _, b in rs]
        lat = [x for s, _ in rs for x in s.latencies_ms]
        # the CPU an idle deployment burns anyway (pollers, checkpoints), charged over the throughput run's length
        idle_ms = [i / 100 * b.seconds * 1000 / b.sent for i, (_, b) in zip(idle[kind], rs)]
        print(f"{kind:8s}: idle CPU {statistics.median(idle[kind]):.1f}% of a core, i.e. {statistics.median(idle_ms):.2f} ms of each "
              "message's CPU below over the throughput run")
        med[kind] = {"rate": statistics.median(rates), "cpu": statistics.median(cpus),
                     "p50": percentile(lat, 50), "p99": percentile(lat, 99)}
        print(f"{kind:8s}: throughput {statistics.median(rates):6.1f} msg/s (min {min(rates):.1f}, max {max(rates):.1f}, n={len(rates)}); "
              f"CPU {statistics.median(cpus):.2f} ms/msg ({min(cpus):.2f}-{max(cpus):.2f}); "
              f"receipt-to-webhook at {args.rate:.0f}/s (runs pooled) {fmt_lat(lat)}")
    targets: list[str] = []
    if "careloop" in med and "bridge" in med:
        ratios = [c[1].rate / b[1].rate for c, b in zip(res["careloop"], res["bridge"])]
        targets.append(f"careloop / bridge throughput, median of the per-run ratios: {statistics.median(ratios):.2f}x")
        r = med["careloop"]["rate"] / med["bridge"]["rate"]
        targets.append(f"careloop / bridge throughput: {r:.2f}x of the medians (per run {', '.join(f'{x:.2f}' for x in ratios)}) "
                       f"(target >= 1x) {'MET' if r >= 1 else 'NOT MET'}")
        targets.append(f"CPU per message, careloop / bridge: {med['careloop']['cpu'] / med['bridge']['cpu']:.2f}x")
    if "careloop" in med:
        c = med["careloop"]["cpu"]
        targets.append(f"careloop CPU per message end to end: {c:.2f} ms (target <= 2.5 ms, stretch 1.5) "
                       f"{'MET' if c <= 2.5 else 'NOT MET'}")
        p99 = med["careloop"]["p99"]
        targets.append(f"careloop receipt-to-webhook p99 at {args.rate:.0f} msg/s: {p99:.1f} ms (target < 100 ms) "
                       f"{'MET' if p99 < 100 else 'NOT MET'}  [fdatasync {max(fs0, fs1):.3f} ms]")
    if "careloop" in med and "baseline" in med:
        b, c = med["baseline"], med["careloop"]
        targets.append(f"careloop ({REPO}) / baseline ({args.baseline}), same runs: p50 {c['p50'] / b['p50']:.2f}x, "
                       f"p99 {c['p99'] / b['p99']:.2f}x, throughput {c['rate'] / b['rate']:.2f}x, CPU {c['cpu'] / b['cpu']:.2f}x")
    for t in targets:
        print(t)
    if profile_text:
        print("\npy-spy of careloop serve during an extra throughput run (not counted above):\n" + profile_text)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "fsync_ms": [fs0, fs1], "median": med, "targets": targets,
                                         "runs": {k: [{"steady_p50_ms": percentile(s.latencies_ms, 50),
                                                       "steady_p99_ms": percentile(s.latencies_ms, 99), "rate": b.rate,
                                                       "cpu_s": b.cpu_s, "seconds": b.seconds, "fsyncs": [s.fsyncs, b.fsyncs]}
                                                      for s, b in v] for k, v in res.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
