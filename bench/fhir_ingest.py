"""FHIR rest-hook ingest: PUT of full Appointment resources from 8 connections with wrk.

careloop (each PUT stored durably before the 2xx; with and without the processing worker
in the same process) against the receiver a user would otherwise write: a bare FastAPI
endpoint under uvicorn that parses the JSON and answers 200, storing nothing.
Runs are interleaved; median and spread of --runs. Usage:
    python bench/fhir_ingest.py [--runs 5] [--seconds 8] [--connections 8]
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
LUA = r'''
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/fhir+json"
counter = 0
request = function()
  counter = counter + 1
  local id = "b" .. counter .. "-" .. math.random(1, 1000000000)
  local body = '{"resourceType":"Appointment","id":"' .. id .. '","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00Z"},"status":"booked","start":"2026-12-01T10:00:00Z","end":"2026-12-01T10:30:00Z","participant":[{"actor":{"reference":"Patient/p1"},"status":"accepted"}]}'
  return wrk.format(nil, "/fhir/default/Appointment/" .. id, nil, body)
end
'''
PEER = '''
import orjson, uvicorn
from fastapi import FastAPI, Request, Response
app = FastAPI()
@app.put("/fhir/default/Appointment/{rid}")
async def put(rid: str, request: Request):
    body = await request.body()
    orjson.loads(body)
    return Response(body, media_type="application/fhir+json")
uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="warning", access_log=False)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} did not start")


def start(kind: str, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    if kind == "peer-fastapi":
        (work / "peer.py").write_text(PEER)
        p = subprocess.Popen([sys.executable, str(work / "peer.py"), str(port)], cwd=work)
        wait(f"http://127.0.0.1:{port}/docs")
        return p, port
    d = Path(tempfile.mkdtemp(dir=work))
    args = [sys.executable, "-m", "middleware", "serve", "--http-port", str(port), "--mllp-port", str(free_port()),
            "--mappings", str(REPO / "mappings"), "--database-url", f"sqlite:///{d}/c.db"]
    if kind == "careloop-ingest-only":
        args.append("--no-worker")
    p = subprocess.Popen(args, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "CARELOOP_LOG_LEVEL": "WARNING"})
    wait(f"http://127.0.0.1:{port}/healthz")
    return p, port


def run_wrk(port: int, seconds: int, conns: int, lua: Path) -> tuple[float, float, str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(lua), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rps, cpu / seconds, p99.group(1) if p99 else "?", float(non2xx.group(1)) if non2xx else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)")
        return 2
    kinds = ["careloop-ingest-only", "careloop-with-worker", "peer-fastapi"]
    work = Path(tempfile.mkdtemp(prefix="careloop-fhir-bench-"))
    lua = work / "put.lua"
    lua.write_text(LUA)
    results: dict[str, list[tuple[float, float, str, float]]] = {k: [] for k in kinds}
    print(f"machine: {os.cpu_count()} cpus; wrk -t2 -c{args.connections} -d{args.seconds}s; careloop on SQLite WAL synchronous=FULL, "
          f"one commit per group of concurrent PUTs; rows stored at start: 0 (fresh DB each run)")
    for r in range(args.runs):
        for k in kinds:  # interleaved
            p, port = start(k, work)
            try:
                results[k].append(run_wrk(port, args.seconds, args.connections, lua))
            finally:
                p.terminate()
                p.wait(timeout=20)
            rps, cpu, p99, bad = results[k][-1]
            print(f"run {r + 1} {k:22s} {rps:8.0f} req/s  p99 {p99:>8s}  wrk CPU {cpu * 100:4.0f}%  non-2xx {bad:.0f}", flush=True)
    print("\nmedian (min-max) over runs:")
    for k in kinds:
        rates = [x[0] for x in results[k]]
        print(f"  {k:22s} {statistics.median(rates):8.0f} req/s ({min(rates):.0f}-{max(rates):.0f})")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
