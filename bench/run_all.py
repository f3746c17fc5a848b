"""Run every benchmark in turn (``make bench``); each prints what it was measured with.

``growth.py`` is benchmark 5 (10k vs 1M rows stored, with EXPLAIN QUERY PLAN of the hot queries; it
fills a ~5 GB SQLite file in a temporary directory, removed at the end); ``flood.py`` is the memory ceiling of the MLLP listener under a flood.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["mllp_ingest.py", "--runs", "5"],
    ["fhir_ingest.py", "--runs", "5"],
    ["pipeline.py", "--runs", "5"],
    ["stages.py", "--runs", "5"],
    ["scheduler_scale.py", "--runs", "5", "--due", "100000"],
    ["scheduler_10m.py", "--pending", "1000000", "--runs", "1", "--peer-pending", "0"],  # 10 M: make bench-scheduler
    ["growth.py", "--runs", "3"],
    ["flood.py"],
]

if __name__ == "__main__":
    rc = 0
    for cmd in BENCHES:
        print(f"\n$ python bench/{' '.join(cmd)}", flush=True)
        rc |= subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
    sys.exit(rc)
