"""Benchmarks for the FHIR listener (not collected by pytest).

    .venv/bin/python tests/fhir/bench_fhir.py [--puts 3000] [--clients 8] [--backfill 10000]

1. notifications/s accepted: PUTs (from client processes) of distinct Appointments over keep-alive HTTP to a running
   ``careloop serve`` process on loopback (SQLite synchronous=FULL); each 2xx means committed.
2. backfill resources/s: 10,000 resources (Appointment/Encounter/CarePlan) from the loopback
   stub, searched with _include of their patients; checks that no trigger was created.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import httpx  # noqa: E402
import orjson  # noqa: E402

import fhir_samples as S  # noqa: E402
from conftest import TOKEN, App, make_settings  # noqa: E402
from fhir_stub import FhirStub  # noqa: E402


def _warm(url: str) -> int:
    return httpx.get(url + "/healthz").status_code


def _put_all(job: tuple[str, dict, list]) -> list[int]:
    url, headers, part = job
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        return [c.put(path, content=body).status_code for path, body in part]


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def bench_puts(n: int, threads: int) -> None:
    """``careloop serve`` as its own process (as deployed); clients in other processes."""
    env = dict(os.environ, TEST_FHIR_TOKEN_HOSPITAL=TOKEN, CARELOOP_WEBHOOK_URL="http://127.0.0.1:9/hooks", CARELOOP_LOG_LEVEL="WARNING")
    with tempfile.TemporaryDirectory() as d, FhirStub() as stub:
        settings = make_settings(Path(d), stub.base)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "careloop"), "serve", "--http-port", str(port), "--mllp-port", str(_free_port()),
             "--database-url", settings.database_url, "--mappings", str(settings.mappings_dir)],
            env=env, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            end = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > end:
                    raise RuntimeError("careloop serve did not start")
                time.sleep(0.1)
            bodies = []
            for i in range(n):
                a = S.appointment(f"b{i}", pid=f"p{i % 50}", version="1", last_updated="2030-01-01T00:00:00Z")
                bodies.append((f"/fhir/hospital/Appointment/b{i}", orjson.dumps(a)))
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json",
                       "User-Agent": "HAPI-FHIR/8.8.0 (FHIR Client; bench)"}
            for label, k in (("1 client", 1), (f"{threads} clients", threads)):
                chunk = bodies[: n // 2] if k == 1 else bodies[n // 2:]
                parts = [chunk[i::k] for i in range(k)]
                with ProcessPoolExecutor(k, mp_context=get_context("spawn")) as pool:
                    list(pool.map(_warm, [url] * k))
                    t0 = time.perf_counter()
                    codes = [c for part in pool.map(_put_all, [(url, headers, p) for p in parts]) for c in part]
                    dt = time.perf_counter() - t0
                ok = sum(1 for c in codes if c in (200, 201))
                print(f"PUT notifications accepted ({label}): {ok}/{len(chunk)} in {dt:.2f} s = {ok / dt:.0f}/s")
            from sqlmodel import Session, func, select

            from middleware.storage.db import make_engine
            from middleware.storage.tables import EventRow, InboundMessage

            engine = make_engine(settings.database_url)
            t0 = time.perf_counter()
            while True:
                with Session(engine) as s:
                    left = s.exec(select(func.count()).select_from(InboundMessage).where(InboundMessage.status == "received")).one()
                    evs = s.exec(select(func.count()).select_from(EventRow)).one()
                if not left or time.perf_counter() - t0 > 300:
                    break
                time.sleep(0.1)
            print(f"processing backlog drained {time.perf_counter() - t0:.2f} s after the last 2xx; events: {evs}")
        finally:
            proc.terminate()
            proc.wait(15)


def bench_backfill(n: int) -> None:
    from sqlmodel import Session, func, select

    from middleware.pipeline.backfill import backfill
    from middleware.listeners.fhir_fetch import FhirFetcher
    from middleware.rules.load import load_ruleset
    from middleware.storage.db import init_db, make_engine
    from middleware.storage.tables import ResourceState, TriggerRow

    with tempfile.TemporaryDirectory() as d, FhirStub() as stub:
        stub.bulk_load([S.patient(f"p{i}", f"M{i}") for i in range(1000)])
        third = n // 3
        stub.bulk_load([S.appointment(f"a{i}", pid=f"p{i % 1000}") for i in range(n - 2 * third)]
                       + [S.encounter_r4(f"e{i}", pid=f"p{i % 1000}") for i in range(third)]
                       + [S.careplan_r4(f"c{i}", pid=f"p{i % 1000}") for i in range(third)])
        settings = make_settings(Path(d), stub.base)
        rs, _ = load_ruleset(settings.mappings_dir)
        engine = make_engine(settings.database_url)
        init_db(engine)
        rep = backfill(engine, rs, rs.sources.get("hospital"), FhirFetcher(stub.base, allow_private_network=True), page=500)
        with Session(engine) as s:
            trig = s.exec(select(func.count()).select_from(TriggerRow)).one()
            unknown = s.exec(select(func.count()).select_from(ResourceState).where(ResourceState.status == None)).one()  # noqa: E711
        print(f"backfill: {rep.resources} resources + {rep.patients} patients in {rep.seconds:.2f} s = "
              f"{rep.rate:.0f} resources/s; triggers {trig}; resources without status {unknown}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--puts", type=int, default=3000)
    ap.add_argument("--clients", type=int, default=8, dest="threads")
    ap.add_argument("--backfill", type=int, default=10000)
    a = ap.parse_args()
    if a.puts:
        bench_puts(a.puts, a.threads)
    if a.backfill:
        bench_backfill(a.backfill)
