"""Deliveries per second to a local webhook receiver (the real SinkServer on loopback).

    .venv/bin/python bench/deliveries.py [--n 2000] [--concurrency 4] [--rate 10000]

Creates N fired triggers for N synthetic patients (one webhook destination, default
policy), then times the real DeliveryWorker (claim → send-time gate → projection →
signed POST → record attempt + disclosure + ledger, one transaction per round) until
all are delivered. SQLite with synchronous=FULL in a temp directory. The connector's
documented rate limit (20/s) is lifted with --rate to measure the pipeline itself.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
from httpx import AsyncClient, Limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.delivery_pipeline import WEBHOOK_SECRET, destination, make_pipeline, write_mappings  # noqa: E402

from middleware.delivery.sink import SinkServer  # noqa: E402
from middleware.storage.tables import DeliveryRow, Disclosure, TriggerRow  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rate", type=float, default=10000.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    with SinkServer([WEBHOOK_SECRET]) as sink:
        dest = destination("hook", "webhook", webhook_url=sink.url + "/hooks", max_concurrency=args.concurrency,
                           rate_per_s=args.rate)
        p = make_pipeline(tmp, write_mappings(tmp, [dest]))
        p.clock.now = datetime.now(timezone.utc)
        now = p.clock().timestamp()
        payload = orjson.dumps({"appointment_start": "2025-06-02T09:00:00-04:00", "appointment_service": "Follow-up visit",
                                "location": "Main Clinic", "purpose": "treatment-reminder"}).decode()
        with p.engine.begin() as conn:
            conn.execute(TriggerRow.__table__.insert(), [dict(
                rule_id="bench", ruleset_version=p.rs.version, name="appointment_reminder", purpose="treatment-reminder",
                destinations="hook", patient_key=f"urn:bench|MRN{i:07d}", resource_key=f"Appointment/b{i}",
                origin_key=f"bench|{i}", resource_version="1", due_at=now, status="pending", payload=payload,
                created_at=now, updated_at=now) for i in range(args.n)])
        p.fire(after=__import__("datetime").timedelta(0))

        async def run() -> float:
            async with AsyncClient(limits=Limits(max_connections=args.concurrency * 2)) as http:
                w = p.worker(http)
                t0 = time.perf_counter()
                while await w.run_once(limit=500):
                    pass
                return time.perf_counter() - t0

        elapsed = asyncio.run(run())
        delivered = len(p.rows(DeliveryRow, DeliveryRow.status == "delivered"))
        disclosures = len(p.rows(Disclosure))
        got = len(sink.received())
    print(f"deliveries: {delivered}/{args.n} delivered, {disclosures} disclosures, sink received {got}")
    print(f"elapsed: {elapsed:.2f} s  ->  {delivered / elapsed:.0f} deliveries/s "
          f"(concurrency {args.concurrency}, SQLite synchronous=FULL, loopback webhook with signature verification)")
    return 0 if delivered == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
