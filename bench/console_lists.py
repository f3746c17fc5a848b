"""Benchmark: the console's message browser with 1,000,000 stored messages (issue 15).

    python bench/console_lists.py [--messages 1000000] [--runs 30] [--postgres URL] [--sqlite-only]

Bulk-inserts synthetic messages (4 sources, 9 types, 6 statuses, 30 days; SQLite ``executemany``,
PostgreSQL ``COPY``), brings the overview's rollups up to date, then requests the list pages
through the real app (FastAPI TestClient, signed in as an operator: routing, session, the named
query, the template) for each filter, page 1 and a deep keyset page, and prints p50/p95 per
filter and the query plans (EXPLAIN) of each page query. Server-side: no network between
client and app. Synthetic data only; nothing asserts a figure.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from middleware.storage.db import init_db, make_engine  # noqa: E402
from middleware.storage.queries import operator as q, rollups  # noqa: E402
from middleware.storage.queries.ingest import INBOX_COLUMNS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCES = [("epic", "mllp", 40), ("cerner", "mllp", 25), ("labs", "http", 15), ("hapi", "fhir", 20)]
HL7_TYPES = ["ADT^A01", "ADT^A03", "ADT^A08", "SIU^S12", "SIU^S15", "ORU^R01"]
FHIR_TYPES = ["Appointment", "Encounter", "Patient"]
STATUSES = [("processed", 900), ("ignored", 40), ("duplicate", 20), ("failed", 20), ("rejected", 5), ("received", 15)]
DAYS = 30


def synthetic(n: int, now: float, seed: int = 7) -> Any:
    """Rows in id order, received over the last ``DAYS`` days (monotonic times, as the inbox writes them)."""
    rng = random.Random(seed)
    src = [s for s, _, w in SOURCES for _ in range(w)]
    chan = {s: c for s, c, _ in SOURCES}
    st = [s for s, w in STATUSES for _ in range(w)]
    start = now - DAYS * 86400
    step = DAYS * 86400 / n
    for i in range(n):
        s = rng.choice(src)
        status = rng.choice(st)
        if chan[s] == "fhir":
            mtype = rng.choice(FHIR_TYPES)
            raw = (f'{{"resourceType":"{mtype}","id":"r{i}","status":"booked","meta":{{"versionId":"1"}},'
                   f'"subject":{{"reference":"Patient/p{i % 50000}"}}}}').encode()
            control = None
        else:
            mtype = rng.choice(HL7_TYPES)
            control = f"C{i:08d}"
            raw = (f"MSH|^~\\&|{s.upper()}|HOSP|CARELOOP|CL|20261201120000||{mtype}|{control}|P|2.5\r"
                   f"EVN|{mtype[-3:]}|20261201120000\rPID|1||MRN{i % 50000:07d}^^^HOSP^MR||SYNTH^PATIENT{i % 997}||19800101|U\r"
                   f"PV1|1|O|CLINIC^{i % 40}\r").encode()
        error = f"normalize: segment PV1 field 19 missing (row {i})" if status in ("failed", "rejected") else None
        yield (s, chan[s], start + i * step, raw, hashlib.sha256(raw).hexdigest(), None, control, mtype, status, error,
               b"MSH|^~\\&|CARELOOP|CL|X|X|20261201||ACK|A1|P|2.5\rMSA|AA|" + (control or "").encode() + b"\r"
               if control else None, None)


def fill(engine: Any, n: int, now: float) -> float:
    t0 = time.perf_counter()
    cols = INBOX_COLUMNS
    assert cols == ("source", "channel", "received_at", "raw", "sha256", "dedup_key", "control_id", "message_type",
                    "status", "error", "ack", "meta")
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":
            sql = f"INSERT INTO inbound_message ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
            batch: list[tuple[Any, ...]] = []
            for row in synthetic(n, now):
                batch.append(row)
                if len(batch) == 50_000:
                    cur.executemany(sql, batch)
                    raw.commit()
                    batch = []
            if batch:
                cur.executemany(sql, batch)
            raw.commit()
        else:
            with cur.copy(f"COPY inbound_message ({', '.join(cols)}) FROM STDIN") as cp:
                for row in synthetic(n, now):
                    cp.write_row(row)
            raw.commit()
            raw.driver_connection.autocommit = True
            raw.driver_connection.execute("VACUUM ANALYZE inbound_message")  # what autovacuum does after a bulk insert (PostgreSQL >= 13)
    finally:
        raw.close()
    return time.perf_counter() - t0


def scenarios(engine: Any, n: int, now: float) -> list[tuple[str, str]]:
    """(name, query string) per filter: page 1, then a deep keyset page (the oldest tenth)."""
    deep = n // 10
    start = now - DAYS * 86400
    mid = start + DAYS * 86400 / 2

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))

    hour = f"since={iso(mid)}&until={iso(mid + 3600)}"
    day = f"since={iso(mid)}&until={iso(mid + 86400)}"
    mid_id = n // 2
    control = f"C{n // 3:08d}"
    return [
        ("all, page 1", ""), ("all, deep", f"before_id={deep}"),
        ("status=failed, page 1", "status=failed"), ("status=failed, deep", f"status=failed&before_id={deep}"),
        ("source+type, page 1", "source=epic&message_type=ADT%5EA08"),
        ("source+type, deep", f"source=epic&message_type=ADT%5EA08&before_id={deep}"),
        ("rare source+type, page 1", "source=labs&message_type=ORU%5ER01"),
        ("control id", f"control_id={control}"),
        ("time range 1 h, page 1", hour), ("time range 1 day, page 1", day),
        ("time range 1 day, deep", f"{day}&before_id={mid_id + int(n / DAYS * 0.9)}"),
        ("errored, page 1", "errored=1"), ("errored, deep", f"errored=1&before_id={deep}"),
        ("status+source, page 1", "status=processed&source=hapi"),
        ("newer page (after_id)", f"status=failed&after_id={deep}"),
    ]


def plans(engine: Any, n: int, now: float) -> None:
    from middleware.api.operator import message_filter

    dialect = engine.dialect.name
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for name, qs in scenarios(engine, n, now):
            params = dict(p.split("=", 1) for p in qs.split("&") if p)
            params = {k: v.replace("%5E", "^") for k, v in params.items()}
            before = params.pop("before_id", None)
            after = params.pop("after_id", None)
            errored = params.pop("errored", None) == "1"
            f = message_filter(errored=errored, **params)
            used = f.used()
            query = q._message_page(used, after is not None)
            given: dict[str, Any] = {k: getattr(f, k) for k in used if k != "errored"}
            given.update(limit=51, before_id=int(before) if before else 2**62) if after is None else given.update(
                limit=51, after_id=int(after))
            c = query.compiled_for(dialect)
            cur.execute(("EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN ") + c.sql, c.params(given))
            plan = " | ".join(str(r[-1] if dialect == "sqlite" else r[0]).strip() for r in cur.fetchall())
            print(f"  plan [{name}]: {plan}")
    finally:
        raw.close()


def overview_parts(engine: Any, now: float, runs: int = 10) -> None:
    """Where the overview's time goes: the figures of the moment and the day of rollups (median ms)."""
    parts = {"now_figures (backlog, triggers, deliveries)": lambda: rollups.now_figures(engine, now),
             "rollups: one day of ingest": lambda: rollups.per_minute(engine, "ingest", int(now // 60) - 1440)}
    for name, fn in parts.items():
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
        print(f"  overview part {name}: median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")


def measure(url: str, n: int, runs: int) -> None:
    from fastapi.testclient import TestClient

    from middleware.console.users import User, hash_password, save
    from middleware.service import Runtime
    from middleware.settings import Settings

    engine = make_engine(url)
    init_db(engine)
    now = time.time()
    print(f"  filled {n:,} messages in {fill(engine, n, now):.0f} s", flush=True)
    t0 = time.perf_counter()
    batches = rollups.fill(engine, now)
    print(f"  rollups brought up to date in {time.perf_counter() - t0:.1f} s ({batches} batches)", flush=True)
    plans(engine, n, now)
    overview_parts(engine, now)
    engine.dispose()
    with tempfile.TemporaryDirectory() as d:
        users = Path(d) / "users.yaml"
        save(users, {"otto": User("otto", hash_password("bench-otto-Pw-2026!"), ("operator",))})
        rt = Runtime(Settings(database_url=url, mappings_dir=REPO / "mappings", console_users_file=users))  # type: ignore[call-arg]
        c = TestClient(rt.http_app(), base_url="https://testserver", follow_redirects=False)
        assert c.post("/signin", data={"username": "otto", "password": "bench-otto-Pw-2026!"}).status_code == 303
        rows = []
        for name, qs in [*scenarios(rt.engine, n, now), ("overview (rollups)", None)]:
            path = "/" if qs is None else "/messages?" + qs
            r = c.get(path)  # warm (first compile of this filter combination)
            assert r.status_code == 200, (path, r.status_code)
            listed = r.text.count('<a href="/messages/')
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                r = c.get(path)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)]
            rows.append((name, statistics.median(times), p95, max(times), listed))
            print(f"  {name:28s} p50 {statistics.median(times):7.1f} ms  p95 {p95:7.1f} ms  max {max(times):7.1f} ms"
                  f"  rows {listed}", flush=True)
        worst = max(r[2] for r in rows)
        print(f"  worst p95 {worst:.1f} ms (target < 300 ms)")
        rt.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--postgres", default=os.environ.get("CARELOOP_TEST_POSTGRES_URL"))
    ap.add_argument("--sqlite-only", action="store_true")
    ap.add_argument("--postgres-only", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    if not args.postgres_only:
        with tempfile.TemporaryDirectory() as d:
            print("SQLite:")
            measure(f"sqlite:///{d}/console.db", args.messages, args.runs)
            print(f"  database size {os.path.getsize(f'{d}/console.db') / 1e9:.2f} GB")
    if args.postgres and not args.sqlite_only:
        import psycopg

        name = f"careloop_bench_console_{os.getpid()}"
        with psycopg.connect(args.postgres, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        try:
            print("PostgreSQL:")
            measure(args.postgres.rsplit("/", 1)[0] + "/" + name, args.messages, args.runs)
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
