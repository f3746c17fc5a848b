"""``careloop serve``'s start and ``GET /metrics`` on an existing database, for one or more checkouts
interleaved in the same run (issue 16, target 5: serving within 3 s of start; a scrape that never waits
for a full count).

``python bench/serve_start.py --database-url URL [--database-url URL2] [--repo /work/main] [--repo .] [--rounds 2]``

For each round, checkout and database: start ``serve`` (with its worker) on free ports, time the first
``/healthz`` 200 and the CPU seconds the process had used by then (``/proc/PID/stat``: load-independent),
then one ``GET /metrics`` at once and another ``--scrape-gap`` seconds later (the second shows what a
scrape serves once the database figures have been read off its path). Prints the load beside each line.
The database is used as it is (the worker fires what is due: a 10 M store from ``scheduler_10m.py --keep``
keeps its pending triggers). A baseline checkout is best a ``git archive`` copy with its bytecode
compiled (``python -m compileall``), as this one's: ``PYTHONDONTWRITEBYTECODE`` is set on this machine.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, REPO, free_port, machine, stop, wait_healthz  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures(text: str) -> str:
    keep = ("careloop_triggers_pending ", "careloop_database_figures_age_seconds ", "careloop_database_figures_read_seconds ")
    vals = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith(keep)}
    if "careloop_triggers_pending" not in vals:
        return "no database figures yet"
    out = f"pending {vals['careloop_triggers_pending']:,.0f}"
    if "careloop_database_figures_age_seconds" in vals:
        out += (f", figures {vals['careloop_database_figures_age_seconds']:.1f}s old, read in"
                f" {vals['careloop_database_figures_read_seconds']:.2f}s")
    return out


def once(repo: Path, url: str, gap: float) -> str:
    http, mllp = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="careloop-bench-start-"))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "middleware", "serve", "--http-port", str(http), "--mllp-port", str(mllp), "--database-url", url,
                             "--mappings", str(repo / "mappings")], cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "serve.log", "wb"))
    try:
        wait_healthz(http, proc, 3600, poll_s=0.02, log=tmp / "serve.log")
        start, cpu = time.perf_counter() - t0, cpu_s(proc.pid)
        scrapes = []
        for wait in (0.0, gap):
            time.sleep(wait)
            t = time.perf_counter()
            r = httpx.get(f"http://127.0.0.1:{http}/metrics", timeout=120)
            r.raise_for_status()
            scrapes.append(f"{time.perf_counter() - t:.2f}s ({figures(r.text)})")
        return f"/healthz after {start:.2f}s ({cpu:.2f}s CPU); GET /metrics {scrapes[0]}, {gap:.0f}s later {scrapes[1]}"
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", action="append", required=True)
    ap.add_argument("--repo", type=Path, action="append", help="a checkout (default: this one); repeat to compare")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scrape-gap", type=float, default=3.0)
    args = ap.parse_args()
    print(f"# serve start and /metrics  {machine()}", flush=True)
    for rnd in range(args.rounds):
        for repo in args.repo or [REPO]:
            for url in args.database_url:
                line = once(repo, url, args.scrape_gap)
                one, five, _ = os.getloadavg()
                print(f"round {rnd + 1} {repo} {url.rsplit('/', 1)[-1]}: {line}  # load {one:.1f} {five:.1f} on {os.cpu_count()} cores",
                      flush=True)


if __name__ == "__main__":
    main()
