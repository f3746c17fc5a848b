"""The default deployment the issue-16 benches run: ``careloop serve`` (worker in process, or
``--no-worker``) on SQLite WAL ``synchronous=FULL`` with the shipped rules (quiet hours off in a
copy so the hour of the run does not matter), a local webhook receiver (``careloop sink``, its own
process, verifying Standard Webhooks signatures), and the SIU / ADT messages that fire rules.

Messages alternate:
* SIU^S12 booked 3 h ahead for a new patient: ``appointment-reminder-24h`` fires at once, so the
  message ends in one signed webhook (counted end to end by its SCH-2 filler id);
* ADT^A03 ED discharge (PV1-2 E) for a new patient: ``ed-followup-2d`` becomes a pending trigger.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, REPO, free_port, wait_healthz, wait_port  # noqa: E402



def dev_secret() -> str:
    sys.path.insert(0, str(REPO))
    from middleware.cli.sink import DEV_WEBHOOK_SECRET

    return str(DEV_WEBHOOK_SECRET)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S") + "+0000"


def siu(tag: str, i: int) -> bytes:
    """SIU^S12 for a new patient booked ~3 h ahead: fires ``appointment-reminder-24h`` now."""
    now = datetime.now(timezone.utc)
    start = (now + timedelta(hours=3)).replace(microsecond=0) + timedelta(seconds=i % 3600)
    end = start + timedelta(minutes=30)
    segs = [
        f"MSH|^~\\&|SCHED|HOSP|CARELOOP|CL|{_ts(now)}||SIU^S12^SIU_S12|{tag}S{i}|P|2.5.1",
        f"SCH|P{tag}{i}^SCHED|{tag}F{i}^SCHED||||FOLLOWUP^Follow-up^LOCAL|||30|MIN|^^30^{_ts(start)}^{_ts(end)}||||||||||||||Booked",
        f"PID|1||MRN{tag}S{i:07d}^^^HOSP^MR||TESTPATIENT^BENCH||19700101|F",
        "RGS|1",
        f"AIS|1||CLINIC^Clinic visit^LOCAL|{_ts(start)}|||30|MIN",
    ]
    return ("\r".join(segs) + "\r").encode()


def adt(tag: str, i: int) -> bytes:
    """ADT^A03 ED discharge home for a new patient: a pending ``ed-followup-2d`` trigger."""
    now = datetime.now(timezone.utc)
    arrived = now - timedelta(hours=4)
    segs = [
        f"MSH|^~\\&|ADT|HOSP|CARELOOP|CL|{_ts(now)}||ADT^A03^ADT_A03|{tag}A{i}|P|2.5.1",
        f"EVN||{_ts(now)}",
        f"PID|1||MRN{tag}A{i:07d}^^^HOSP^MR||TESTPATIENT^EDBENCH||19700101|F",
        f"PV1|1|E|ED^01^A^HOSP|E|||||||||||||||V{tag}{i}^^^HOSP^VN|||||||||||||||||01||||||||{_ts(arrived)}|{_ts(now)}",
    ]
    return ("\r".join(segs) + "\r").encode()


def mix(tag: str, n: int, start: int = 0) -> list[bytes]:
    """``n`` messages, SIU and ADT alternating, unique control ids under ``tag``."""
    return [siu(tag, i) if i % 2 == 0 else adt(tag, i) for i in range(start, start + n)]


def mappings_copy(work: Path) -> Path:
    maps = work / "mappings"
    if not maps.exists():
        shutil.copytree(REPO / "mappings", maps)
        st = maps / "settings.yaml"
        st.write_text("\n".join(ln for ln in st.read_text().splitlines() if not ln.startswith("quiet_hours:"))
                      + "\nquiet_hours: null\n")
    return maps


def start_sink(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "middleware", "sink", "--port", str(port), "--secret", dev_secret()],
                            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_port(port, 30, proc)
    return proc, f"http://127.0.0.1:{port}"


def start_careloop(work: Path, hook_base: str, *, worker: bool, name: str,
                   repo: Path = REPO, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``careloop serve`` (with its worker unless ``worker`` is false) on a fresh SQLite file; ``repo``: the
    checkout whose code runs (another one gives a before/after in the same run); ``env``: more settings
    (``CARELOOP_WORKER_PROCESS=false``: the worker in serve's own threads, as before issue 16's worker process)."""
    maps = mappings_copy(work)
    http, mllp = free_port(), free_port()
    db = work / f"{name}.db"
    env = {**os.environ, "CARELOOP_WEBHOOK_URL": hook_base + "/hooks", "CARELOOP_WEBHOOK_SECRET": dev_secret(),
           "CARELOOP_LOG_LEVEL": "WARNING", "PYTHONPATH": str(repo), **(env or {})}
    cmd = [PY, "-m", "middleware", "serve", "--http-port", str(http), "--mllp-port", str(mllp),
           "--mappings", str(maps), "--database-url", f"sqlite:///{db}"] + ([] if worker else ["--no-worker"])
    log = (work / f"{name}.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_healthz(http, proc, 60, log=work / (name + ".log"))
    wait_port(mllp, 30, proc)
    return proc, mllp, db


def backlog(db: Path) -> int:
    """Stored messages not yet processed (``received``)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(con.execute("SELECT count(*) FROM inbound_message WHERE status = 'received'").fetchone()[0])
    finally:
        con.close()


def counts(db: Path) -> dict[str, int]:
    """Rows by table/status, for the end-to-end accounting."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        out = {f"inbound.{s}": int(n) for s, n in con.execute("SELECT status, count(*) FROM inbound_message GROUP BY status")}
        out.update({f"trigger.{s}": int(n) for s, n in con.execute("SELECT status, count(*) FROM \"trigger\" GROUP BY status")})
        out.update({f"delivery.{s}": int(n) for s, n in con.execute("SELECT status, count(*) FROM delivery GROUP BY status")})
        return out
    finally:
        con.close()


def wait_drained(db: Path, timeout: float) -> float:
    """Seconds until nothing is left ``received`` (or ``timeout``)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if backlog(db) == 0:
            break
        time.sleep(0.1)
    return time.perf_counter() - t0


def sink_received(base: str) -> list[dict[str, object]]:
    return list(httpx.get(base + "/received", timeout=120).json())
