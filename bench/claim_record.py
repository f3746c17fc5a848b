"""The database side of firing and delivering, without HTTP: microseconds per row.

    .venv/bin/python bench/claim_record.py [--backend sqlite|postgresql] [--n 3000] [--runs 3]

Stores ``--n`` due triggers (one webhook destination each) in a fresh database, then times
``Scheduler.fire_due`` until nothing is due (claim, fire-time checks, deliveries created), then
``DeliveryWorker.claim`` (lease, triggers, send-time gate, projection) and ``record`` (every
delivery answered 200: attempts, statuses, disclosures) in batches of 500, until nothing is left.
Reports the best run per step. PostgreSQL uses ``CARELOOP_TEST_POSTGRES_URL`` (a fresh database
per run, dropped afterwards).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import orjson  # noqa: E402

from support.delivery_pipeline import destination, write_mappings  # noqa: E402

from middleware.delivery.registry import Delivered  # noqa: E402
from middleware.delivery.worker import DeliveryWorker, Sent  # noqa: E402
from middleware.rules.load import load_ruleset  # noqa: E402
from middleware.scheduler.runner import Scheduler  # noqa: E402
from middleware.storage.db import init_db, make_engine  # noqa: E402
from middleware.storage.tables import TriggerRow  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rs, diags = load_ruleset(write_mappings(tmp, [destination("hook", "webhook", webhook_url="http://127.0.0.1:9/h")]))
    assert rs is not None, diags
    res: dict[str, list[float]] = {"fire": [], "claim": [], "record": []}
    for run in range(args.runs):
        drop = None
        if args.backend == "sqlite":
            url = f"sqlite:///{tmp}/b{run}.db"
        else:
            import psycopg

            admin = os.environ["CARELOOP_TEST_POSTGRES_URL"]
            name = "bench_" + uuid.uuid4().hex[:8]
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{name}"')
            url, drop = admin.rsplit("/", 1)[0] + "/" + name, name
        engine = make_engine(url)
        init_db(engine)
        now = datetime.now(timezone.utc)
        ts = now.timestamp()
        payload = orjson.dumps({"location": "Main Clinic"}).decode()
        with engine.begin() as conn:
            conn.execute(TriggerRow.__table__.insert(), [dict(  # type: ignore[attr-defined]
                rule_id="bench", ruleset_version=rs.version, name="reminder", purpose="treatment-reminder",
                destinations="hook", patient_key=f"urn:bench|M{i:07d}", resource_key=f"Appointment/b{i}",
                origin_key=f"bench|{i}", resource_version="1", due_at=ts - 1, status="pending", payload=payload,
                created_at=ts, updated_at=ts) for i in range(args.n)])
        scheduler = Scheduler(engine, lambda: rs, clock=lambda: now, batch=500)
        t0 = time.perf_counter()
        while scheduler.fire_due():
            pass
        res["fire"].append(time.perf_counter() - t0)
        worker = DeliveryWorker(engine, lambda: rs, contact_secret="bench-contact-secret", clock=lambda: now)
        claim_s = record_s = 0.0
        while True:
            t0 = time.perf_counter()
            claimed = worker.claim(500)
            claim_s += time.perf_counter() - t0
            if not claimed:
                break
            t0 = time.perf_counter()
            worker.record([Sent(c, Delivered(200, "ok")) for c in claimed])
            record_s += time.perf_counter() - t0
        res["claim"].append(claim_s)
        res["record"].append(record_s)
        engine.dispose()
        if drop:
            import psycopg

            with psycopg.connect(os.environ["CARELOOP_TEST_POSTGRES_URL"], autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{drop}" WITH (FORCE)')
    print(f"{args.backend}, {args.n} triggers, best of {args.runs}: "
          + ", ".join(f"{k} {min(v) / args.n * 1e6:.0f} us/row" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
