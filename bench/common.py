"""Shared pieces of the benchmarks: the machine, statistics, servers in subprocesses,
an asyncio MLLP load client, a probe of what a commit waits for.

Benchmarks, not tests: nothing here asserts a number. Every server binds loopback and
every loop is bounded.
"""
from __future__ import annotations

import asyncio
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def machine() -> str:
    """One line: cores, CPU model, memory, Python."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"nproc={os.cpu_count()} cpu='{model}' mem={mem_gb:.1f} GiB python={platform.python_version()}"


def spread(values: Sequence[float]) -> str:
    """``median (min–max, n=N)``."""
    if not values:
        return "n/a"
    return f"{statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f}, n={len(values)})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthz(http: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0, poll_s: float = 0.1,
                 log: Path | str | None = None) -> None:
    """Until ``careloop serve`` on ``http`` answers ``/healthz`` 200 (checked every ``poll_s``); an
    error if ``proc`` exits first (naming ``log``) or nothing answers within ``timeout``."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}" + (f": see {log}" if log else ""))
        try:
            if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"careloop on :{http} did not answer /healthz within {timeout:.0f}s")


async def send_on_schedule(port: int, messages: Sequence[bytes], rate: float, conns: int, c: int, t0: float,
                           per_sec: dict[int, list[float]]) -> None:
    """Connection ``c`` of ``conns``: send its share of ``messages`` (message k at ``t0 + k/rate``),
    each after the previous one's ACK; ACK latencies (ms) by second since ``t0`` into ``per_sec``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for k in range(c, len(messages), conns):
        await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
        s = time.perf_counter()
        writer.write(b"\x0b" + messages[k] + b"\x1c\r")
        await reader.readuntil(b"\x1c\r")
        e = time.perf_counter()
        per_sec[int(e - t0)].append((e - s) * 1000)
    writer.close()


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def siu_message(control: str, *, mrn: str = "MRN000500", appt: str = "F5001", start: datetime | None = None) -> bytes:
    """A 7-segment SIU^S12 (synthetic patient), the same shape the peers are measured with."""
    now = datetime.now(timezone.utc)
    start = start or (now + timedelta(days=5))
    fmt = "%Y%m%d%H%M%S+0000"
    end = start + timedelta(minutes=30)
    segs = [
        f"MSH|^~\\&|SCHEDSYS|HOSP|CARELOOP|CL|{now.strftime(fmt)}||SIU^S12^SIU_S12|{control}|P|2.5.1",
        f"SCH|P{appt}^SCHED|{appt}^SCHED||||FOLLOWUP^Follow-up visit^LOCAL|||30|MIN|^^30^{start.strftime(fmt)}^{end.strftime(fmt)}||||||||||||||Booked",
        f"PID|1||{mrn}^^^HOSP^MR||TESTPATIENT^BRAVO^^^^^L||19700101|F|||1 TEST ST^^SPRINGFIELD^MA^01101^USA^H||^PRN^PH^^1^555^5550142",
        "RGS|1",
        f"AIS|1||CLINIC^Clinic visit^LOCAL|{start.strftime(fmt)}|||30|MIN",
        f"AIL|1||MAIN^^^HOSP^^^^Main Clinic|||{start.strftime(fmt)}|||30|MIN",
        "NTE|1||synthetic benchmark message",
    ]
    return ("\r".join(segs) + "\r").encode()


@dataclass
class LoadResult:
    rate: float  # messages per second
    seconds: float
    client_cpu_s: float  # CPU time the load client used (user+sys)
    latencies_ms: list[float]

    @property
    def client_cpu_pct(self) -> float:
        return 100.0 * self.client_cpu_s / self.seconds if self.seconds else 0.0


async def mllp_load(port: int, messages: Sequence[bytes], conns: int, *, reconnect: bool = False) -> LoadResult:
    """Send ``messages`` over ``conns`` connections (request, wait for the ACK, next)."""
    per = [messages[i::conns] for i in range(conns)]
    lat: list[float] = []

    async def one(batch: Sequence[bytes]) -> None:
        r: asyncio.StreamReader | None = None
        w: asyncio.StreamWriter | None = None
        for body in batch:
            if w is None:
                r, w = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.perf_counter()
            w.write(SB + body + EB + CR)
            await r.readuntil(EB + CR)  # type: ignore[union-attr]
            lat.append((time.perf_counter() - t0) * 1000)
            if reconnect:
                w.close()
                r = w = None
        if w is not None:
            w.close()

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(b) for b in per))
    dt = time.perf_counter() - t0
    return LoadResult(len(messages) / dt, dt, time.process_time() - c0, lat)


def run_load(port: int, messages: Sequence[bytes], conns: int, *, reconnect: bool = False) -> LoadResult:
    return asyncio.run(mllp_load(port, messages, conns, reconnect=reconnect))


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of a running process and its live descendants (from /proc): ``serve``
    runs its worker as a child process."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return float("nan")
    for child in children(pid):
        c = cpu_seconds(child)
        if c == c:
            own += c
    return own


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (``/proc/PID/task/*/children``)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def child_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def strace_fsyncs(pid: int, action: Callable[[], Any]) -> tuple[int, Any]:
    """Count fsync/fdatasync calls of ``pid`` (all threads) while ``action`` runs; -1 if strace is missing."""
    import shutil

    if not shutil.which("strace"):
        return -1, action()
    out = Path(f"/tmp/careloop-bench-strace-{pid}.txt")
    st = subprocess.Popen(["strace", "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), "-p", str(pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        res = action()
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(10)
    n = 0
    for line in out.read_text().splitlines() if out.exists() else []:
        cols = line.split()
        if cols and cols[-1] in ("fsync", "fdatasync"):
            n += int(cols[3]) if len(cols) >= 5 else 0
    return n, res


def fsync_latency_ms(directory: Path, n: int = 200) -> float:
    """Median latency of write(4 KiB) + fdatasync in ``directory`` (what one group commit waits for)."""
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        times = []
        for _ in range(n):
            os.lseek(fd, 0, 0)
            t = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
