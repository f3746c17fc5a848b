"""Run every benchmark in turn (``make bench``); each prints what it was measured with.

``growth.py`` is benchmark 5 (10k vs 1M rows stored, with EXPLAIN QUERY PLAN of the hot queries; it
fills a ~5 GB SQLite file in a temporary directory, removed at the end); ``flood.py`` is the memory ceiling of the MLLP listener under a flood.
``default_deployment.py`` (issue 16) is MLLP ingest with the worker running; ``bursts.py`` 1,000 msg/s for
2 minutes counted end to end; ``http_clients.py`` the webhook POST's client CPU (httpx vs aiohttp).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["default_deployment.py", "--runs", "3"],  # issue 16, benchmark 1: `serve` with its worker, beside --no-worker and python-hl7
    ["mllp_ingest.py", "--runs", "5"],
    ["fhir_ingest.py", "--runs", "5"],
    ["pipeline.py", "--runs", "5"],
    ["stages.py", "--runs", "5"],
    ["scheduler_scale.py", "--runs", "5", "--due", "100000"],
    ["scheduler_10m.py", "--pending", "1000000", "--runs", "1", "--peer-pending", "0"],  # 10 M: make bench-scheduler
    ["growth.py", "--runs", "3"],
    ["flood.py"],
    ["bursts.py", "--rate", "1000", "--seconds", "120", "--conns", "8"],  # issue 16, benchmark 3
    ["http_clients.py", "--runs", "5"],  # issue 16: the delivery HTTP client, by measurement
]

if __name__ == "__main__":
    rc = 0
    for cmd in BENCHES:
        print(f"\n$ python bench/{' '.join(cmd)}", flush=True)
        rc |= subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
    sys.exit(rc)
