"""Run every benchmark in turn (``make bench``); each prints what it was measured with.

Benchmark 5 (growth at 10k and 1M rows) is not yet written: see docs/benchmarks.md, "What is not measured yet".
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["mllp_ingest.py", "--runs", "5"],
    ["mllp_ingest.py", "--runs", "5", "--prefill", "1000000", "--servers", "careloop"],
    ["fhir_ingest.py", "--runs", "5"],
    ["pipeline.py", "--runs", "3"],
    ["scheduler_scale.py", "--runs", "5"],
]

if __name__ == "__main__":
    rc = 0
    for cmd in BENCHES:
        print(f"\n$ python bench/{' '.join(cmd)}", flush=True)
        rc |= subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
    sys.exit(rc)
