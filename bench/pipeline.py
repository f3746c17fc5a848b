"""Whole pipeline: HL7v2 over MLLP -> storage -> FHIR normalization -> the shipped rule library
-> trigger -> signed webhook to a local receiver. Reports (a) p50/p99 latency from the send
of each message to the receiver's call, at a steady rate, and (b) sustained messages/s.

The message is an SIU^S12 for an appointment a few hours ahead, so the shipped
`appointment-reminder-24h` rule fires at once (booked inside 24 h). Quiet hours are turned
off in a copy of the mappings so the figure does not depend on the hour of the run; each
message is a new patient so FCC caps do not suppress. Usage:
    python bench/pipeline.py [--rate 200] [--seconds 10] [--burst 2000] [--runs 5] [--servers careloop,bridge]

The peer, run interleaved with careloop in the same run, is ``bench/peers.py bridge``: the
script a developer would write instead (parse, POST a signed webhook, ACK; nothing stored).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import machine, wait_healthz  # noqa: E402
from middleware.cli.sink import DEV_WEBHOOK_SECRET  # noqa: E402
from middleware.delivery.sink import SinkServer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ts(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S") + "+0000"


def message(i: int, start: datetime) -> bytes:
    now = datetime.now(timezone.utc)
    end = start + timedelta(minutes=30)
    segs = [
        f"MSH|^~\\&|SCHED|HOSP|CARELOOP|CL|{ts(now)}||SIU^S12^SIU_S12|B{i}-{time.time_ns()}|P|2.5.1",
        f"SCH|P{i}^SCHED|F{i}-{time.time_ns()}^SCHED||||FOLLOWUP^Follow-up^LOCAL|||30|MIN|^^30^{ts(start)}^{ts(end)}||||||||||||||Booked",
        f"PID|1||MRNB{i:07d}^^^HOSP^MR||TESTPATIENT^BENCH||19700101|F",
        "RGS|1",
        f"AIS|1||CLINIC^Clinic visit^LOCAL|{ts(start)}|||30|MIN",
    ]
    return ("\r".join(segs) + "\r").encode()


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: dict[str, float] = {}

    async def send(self, i: int, writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
        start = (datetime.now(timezone.utc) + timedelta(hours=3)).replace(microsecond=0) + timedelta(seconds=i % 3600)
        self.sent[start.isoformat()] = time.perf_counter()
        writer.write(b"\x0b" + message(i, start) + b"\x1c\r")
        await writer.drain()
        await reader.readuntil(b"\x1c\r")


def latencies(sink: SinkServer, client: Client, t0_wall: float, t0_perf: float) -> list[float]:
    out = []
    for r in sink.received():
        body = r["body"] or {}
        key = (body.get("data") or {}).get("appointment_start")
        if not key:
            continue
        sent = client.sent.get(datetime.fromisoformat(key.replace("Z", "+00:00")).isoformat())
        if sent is None:
            continue
        got = datetime.fromisoformat(r["received_at"]).timestamp() - t0_wall + t0_perf
        out.append((got - sent) * 1000)
    return out


async def steady(port: int, rate: float, seconds: float, client: Client, base: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for k in range(n):
        await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        await client.send(base + k, writer, reader)
    writer.close()
    return n


async def burst(port: int, total: int, conns: int, client: Client, base: int) -> None:
    async def one(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for k in range(c, total, conns):
            await client.send(base + k, writer, reader)
        writer.close()
    await asyncio.gather(*(one(c) for c in range(conns)))


def wait_delivered(sink: SinkServer, n: int, timeout: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if len([r for r in sink.received() if r["type"] == "appointment_reminder"]) >= n:
            return time.perf_counter()
        time.sleep(0.02)
    raise SystemExit(f"only {len(sink.received())}/{n} delivered within {timeout}s")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def fresh_postgres(url: str, run: int) -> str:
    """A new, empty database on the server of ``url`` for one run; return its URL."""
    import psycopg

    name = f"careloop_bench_{os.getpid()}_{run}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {name}")
        con.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


class Procs:
    """The server processes of one run (stopped together)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def terminate(self) -> None:
        for p in self.procs:
            p.terminate()

    def wait(self, timeout: float) -> None:
        for p in self.procs:
            p.wait(timeout=timeout)


def start_server(kind: str, work: Path, hook_url: str, database_url: str = "", workers: int = 0) -> tuple[Procs, int]:
    """``careloop``: ``careloop serve`` on SQLite with its worker in process, or, with ``database_url``
    (PostgreSQL) and ``workers`` > 0, ``serve --no-worker`` plus that many ``careloop worker``
    processes; ``bridge``: bench/peers.py's hand-written bridge."""
    http, mllp = free_port(), free_port()
    log = (work / f"{kind}.log").open("wb")
    procs = Procs()
    if kind == "bridge":
        env = {**os.environ, "BRIDGE_WEBHOOK_URL": hook_url, "BRIDGE_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET}
        procs.procs.append(subprocess.Popen([sys.executable, str(REPO / "bench" / "peers.py"), "bridge", str(mllp)],
                                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT))
        wait_port(mllp)
        return procs, mllp
    maps = work / "mappings"
    shutil.copytree(REPO / "mappings", maps)
    st = maps / "settings.yaml"
    st.write_text("\n".join(ln for ln in st.read_text().splitlines() if not ln.startswith("quiet_hours:")) + "\nquiet_hours: null\n")
    env = {**os.environ, "CARELOOP_WEBHOOK_URL": hook_url, "CARELOOP_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
           "CARELOOP_LOG_LEVEL": "WARNING"}
    db = database_url or f"sqlite:///{work}/c.db"
    serve = [sys.executable, "-m", "middleware", "serve", "--http-port", str(http), "--mllp-port", str(mllp),
             "--mappings", str(maps), "--database-url", db]
    procs.procs.append(subprocess.Popen(serve + (["--no-worker"] if workers else []), cwd=work, env=env, stdout=log,
                                        stderr=subprocess.STDOUT))
    wait_healthz(http, timeout=30)
    wait_port(mllp)
    for _ in range(workers):
        procs.procs.append(subprocess.Popen([sys.executable, "-m", "middleware", "worker", "--mappings", str(maps),
                                             "--database-url", db], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs, mllp


def run_once(args: argparse.Namespace, run: int, kind: str) -> tuple[list[float], float]:
    work = Path(tempfile.mkdtemp(prefix=f"careloop-pipeline-{kind}-"))
    with SinkServer([DEV_WEBHOOK_SECRET]) as sink:
        pg = fresh_postgres(args.postgres, run) if args.postgres and kind == "careloop" else ""
        proc, mllp = start_server(kind, work, sink.url + "/hooks", pg, args.workers if pg else 0)
        try:
            client = Client(mllp)
            t0_wall, t0_perf = time.time(), time.perf_counter()
            n = asyncio.run(steady(mllp, args.rate, args.seconds, client, 0))
            wait_delivered(sink, n, 120)
            lat = latencies(sink, client, t0_wall, t0_perf)
            b0 = time.perf_counter()
            asyncio.run(burst(mllp, args.burst, 8, client, 5000))
            done = wait_delivered(sink, n + args.burst, 600)
            rate = args.burst / (done - b0)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    shutil.rmtree(work, ignore_errors=True)
    lat.sort()
    print(f"run {run} {kind:8s}: steady {args.rate:.0f} msg/s x {args.seconds:.0f} s: p50 {statistics.median(lat):.1f} ms, "
          f"p99 {lat[int(len(lat) * 0.99) - 1]:.1f} ms (n={len(lat)}); sustained {rate:.0f} msg/s end to end "
          f"({args.burst} messages, 8 connections)", flush=True)
    return lat, rate


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--servers", default="careloop,bridge")
    ap.add_argument("--postgres", default="", help="postgresql:// URL of a server: careloop runs on a fresh database there")
    ap.add_argument("--workers", type=int, default=2, help="with --postgres: `careloop worker` processes beside `serve --no-worker`")
    args = ap.parse_args()
    kinds = args.servers.split(",")
    print(f"machine: {machine()}; load average before: {os.getloadavg()[0]:.2f}")
    where = (f"PostgreSQL (synchronous_commit=on), `serve --no-worker` + {args.workers} `careloop worker` processes"
             if args.postgres else "`careloop serve` (worker in process) on SQLite WAL synchronous=FULL")
    print(f"careloop: {where}, the shipped rules with quiet "
          "hours off, every message stored before its ACK and every webhook signed, recorded and audited; bridge: "
          "python-hl7 server + httpx POST then ACK, nothing stored. The receiver (same process as the load client) "
          "verifies Standard Webhooks signatures.", flush=True)
    res: dict[str, tuple[list[float], list[float], list[float]]] = {k: ([], [], []) for k in kinds}
    for r in range(args.runs):
        for kind in kinds:  # interleaved
            lat, rate = run_once(args, r + 1, kind)
            res[kind][0].append(statistics.median(lat))
            res[kind][1].append(lat[int(len(lat) * 0.99) - 1])
            res[kind][2].append(rate)
    print()
    for kind, (p50s, p99s, rates) in res.items():
        print(f"{kind:8s} over {args.runs} runs: p50 {statistics.median(p50s):.1f} ms ({min(p50s):.1f}-{max(p50s):.1f}), "
              f"p99 {statistics.median(p99s):.1f} ms ({min(p99s):.1f}-{max(p99s):.1f}); "
              f"sustained {statistics.median(rates):.0f} msg/s ({min(rates):.0f}-{max(rates):.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
