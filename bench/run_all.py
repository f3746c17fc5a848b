"""Run every benchmark in turn (``make bench``); each prints what it was measured with.

``growth.py`` is benchmark 5 (10k vs 1M rows stored, with EXPLAIN QUERY PLAN of the hot queries; it
fills a ~5 GB SQLite file in a temporary directory, removed at the end); ``flood.py`` is the memory ceiling of the MLLP
listener under a flood.
Issue 16: ``default_deployment.py`` is benchmark 1 (MLLP ingest with the worker running); ``whole_pipeline.py`` benchmark 2
(the default deployment end to end beside the hand-written bridge; it replaces ``pipeline.py`` here, which measured the same
with the receiver in the load client's process); ``bursts.py`` benchmark 3 (1,000 msg/s for 2 minutes counted end to end);
``postgres_workers.py`` benchmark 4 (PostgreSQL, ``serve --no-worker`` + 1 and 2 workers; skipped without
``CARELOOP_TEST_POSTGRES_URL``); ``http_clients.py`` the webhook POST's client CPU (httpx vs aiohttp). The 10 M scheduler
run (benchmark 5) is ``make bench-scheduler``.

Time budget (``make bench`` must stay under an hour): each bench's wall time and the running total are printed.
Shortened with flags to fit: ``default_deployment`` 2 runs instead of 3; ``whole_pipeline`` 2 runs (one with each
deployment first); ``mllp_ingest``, ``fhir_ingest``, ``stages`` and ``scheduler_scale`` 3 runs instead of 5, ``growth``
2 instead of 3; ``postgres_workers`` bursts for 5 s instead of 20 (each configuration waits for its burst to drain;
PostgreSQL processed 25-95 msg/s on the shared 2-core machine). ``bursts.py`` keeps the issue's full 2 minutes: it and
its drain (~120,000 messages, processed at ~85-180 msg/s) are the longest item, ~13-25 minutes. Estimated total on a
quiet 2-core machine: 45-60 minutes (from the parts' own figures; the whole list has not been run end to end on the
shared machine). If it runs over, shorten ``bursts.py`` first.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ["default_deployment.py", "--runs", "2"],  # issue 16, benchmark 1: `serve` with its worker, beside --no-worker and python-hl7
    ["whole_pipeline.py", "--runs", "2"],  # issue 16, benchmark 2: end to end beside the hand-written bridge
    ["mllp_ingest.py", "--runs", "3"],
    ["fhir_ingest.py", "--runs", "3"],
    ["stages.py", "--runs", "3"],  # CPU per stage in one process (benchmark 2's split)
    ["scheduler_scale.py", "--runs", "3", "--due", "100000"],
    ["scheduler_10m.py", "--pending", "1000000", "--runs", "1", "--peer-pending", "0"],  # 10 M: make bench-scheduler
    ["growth.py", "--runs", "2"],
    ["flood.py"],
    ["bursts.py", "--rate", "1000", "--seconds", "120", "--conns", "8"],  # issue 16, benchmark 3
    ["postgres_workers.py", "--burst-seconds", "5"],  # issue 16, benchmark 4 (needs CARELOOP_TEST_POSTGRES_URL)
    ["http_clients.py", "--runs", "5"],  # issue 16: the delivery HTTP client, by measurement
]

if __name__ == "__main__":
    rc = 0
    t_all = time.monotonic()
    for cmd in BENCHES:
        if cmd[0] == "postgres_workers.py" and not os.environ.get("CARELOOP_TEST_POSTGRES_URL"):
            print("\n# postgres_workers.py skipped: set CARELOOP_TEST_POSTGRES_URL to a server it may create databases on")
            continue
        print(f"\n$ python bench/{' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        rc |= subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
        print(f"# {cmd[0]} took {time.monotonic() - t0:.0f} s; make bench so far {(time.monotonic() - t_all) / 60:.1f} min", flush=True)
    sys.exit(rc)
