"""Issue 16's five benchmarks in one run (``make bench-issue16``), each beside its peer, on one machine
in one sitting: what ``docs/benchmarks.md`` §10 "One run of the five" reports.

1. ``default_deployment.py``: MLLP ingest in ``careloop serve`` with its worker (a child process), beside
   the same without the ingest spool, the worker in serve's threads, ``--no-worker`` and python-hl7's bare server;
2. ``whole_pipeline.py``: the default deployment end to end beside the hand-written bridge;
3. ``bursts.py``: 1,000 msg/s for 2 minutes over 8 connections, counted end to end;
4. ``postgres_workers.py``: PostgreSQL, ``serve --no-worker`` + 1 and 2 ``careloop worker`` (needs
   ``CARELOOP_TEST_POSTGRES_URL``);
5. ``scheduler_10m.py`` at ``--pending`` triggers (1,000,000 here; ``make bench-scheduler`` runs 10,000,000).

Each bench's output goes to the terminal and to ``bench/results/issue16_<bench>.txt``.
``--quick`` shortens every bench (a smoke run, not figures to report).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def plan(quick: bool, pending: int) -> list[list[str]]:
    if quick:
        return [["default_deployment.py", "--runs", "1", "--messages", "300", "--seconds", "1"],
                ["whole_pipeline.py", "--runs", "1", "--messages", "200", "--seconds", "2"],
                ["bursts.py", "--rate", "200", "--seconds", "5"],
                ["scheduler_10m.py", "--pending", "20000", "--runs", "1", "--peer-pending", "0"],
                ["postgres_workers.py", "--workers", "1", "--messages", "200", "--pipeline-messages", "200", "--burst-seconds", "3"]]
    return [["default_deployment.py", "--runs", "2", "--messages", "2000", "--seconds", "5",
             "--servers", "careloop,no-spool,in-process,no-worker,python-hl7"],
            ["whole_pipeline.py", "--runs", "2", "--messages", "2000", "--seconds", "10"],
            ["bursts.py", "--rate", "1000", "--seconds", "120", "--conns", "8"],
            ["scheduler_10m.py", "--pending", str(pending), "--runs", "1", "--peer-pending", "0"],
            ["postgres_workers.py", "--burst-seconds", "10"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--only", help="comma-separated bench names to run (e.g. bursts,whole_pipeline)")
    args = ap.parse_args()
    out_dir = HERE / "results"
    rc = 0
    t_all = time.monotonic()
    for cmd in plan(args.quick, args.pending):
        name = cmd[0].removesuffix(".py")
        if args.only and name not in args.only.split(","):
            continue
        if name == "postgres_workers" and not os.environ.get("CARELOOP_TEST_POSTGRES_URL"):
            print("# postgres_workers.py skipped: set CARELOOP_TEST_POSTGRES_URL to a server it may create databases on")
            continue
        print(f"\n$ python bench/{' '.join(cmd)}  (load {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
        t0 = time.monotonic()
        log = (out_dir / f"issue16_{name}{'_quick' if args.quick else ''}.txt").open("w")
        log.write(f"$ python bench/{' '.join(cmd)}\n")
        proc = subprocess.Popen([sys.executable, str(HERE / cmd[0]), *cmd[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        rc |= proc.wait()
        log.write(f"# took {time.monotonic() - t0:.0f} s\n")
        log.close()
        print(f"# {name} took {time.monotonic() - t0:.0f} s; {(time.monotonic() - t_all) / 60:.1f} min so far", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
