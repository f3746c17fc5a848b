"""Outcome report benchmark (issue 14): a report over N journey entries (default 1,000,000,
each with a trigger) and 5N events, on SQLite and PostgreSQL; plus the query plans of the
matching reads (per-patient entries, the patient's events by type, closing windows), which
must be index searches, not scans.

    python bench/outcomes_report.py [--entries 1000000] [--events-per-entry 5] [--postgres URL]

Rows are synthetic and written with executemany through the registry's own queries where one
exists (entries), and plain bulk inserts for filler (events, triggers).
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

from middleware.outcomes import report  # noqa: E402
from middleware.storage.db import init_db, make_engine  # noqa: E402
from middleware.storage.queries import outcomes as q  # noqa: E402
from middleware.storage.sql import unit  # noqa: E402

GOALS = ["noshow-rebooked-14d", "reminder-kept", "fuh-7d", "tcm-visit-14d"]
STATUSES = ["achieved"] * 4 + ["missed"] * 4 + ["excluded", "pending"]
DESTINATIONS = ["webhook", "sms", "webhook,sms"]
#: of treated entries: 80% delivered, 10% stopped at the trigger (reason), 10% suppressed at send time
TRIGGER_STOPS = [("suppressed", "cap reached: 3 reminders to this patient this week (limit 3)"),
                 ("cancelled", "cancelled before its due time: appointment cancelled (event 1)"),
                 ("skipped", "quiet hours push it to 2026-12-02T08:00:00-05:00, not before start")]
DELIVERY_STOPS = ["consent 7: deny provision for purpose treatment-reminder / destination sms",
                  "opt-out (suppression 3, sms STOP; all destinations): STOP"]


def fill(engine, entries: int, events_per_entry: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    T = SQLModel.metadata.tables
    batch = 20000
    t0 = time.perf_counter()
    stops = 0
    for start in range(0, entries, batch):
        n = min(batch, entries - start)
        out_rows, trig_rows, ev_rows, del_rows = [], [], [], []
        for i in range(start, start + n):
            goal = GOALS[i % len(GOALS)]
            arm = "held_out" if rng.random() < 0.1 else "treated"
            status = rng.choice(STATUSES)
            fate = rng.random()
            t_status, t_reason = ("fired", None) if fate < 0.9 or arm == "held_out" else rng.choice(TRIGGER_STOPS)
            delivered = arm == "treated" and fate < 0.8
            if arm == "treated" and 0.8 <= fate < 0.9:
                del_rows.append(dict(trigger_id=i + 1, destination="sms", idempotency_key=f"k{i}", status="suppressed",
                                     attempts=1, next_attempt_at=1.7e9, last_error=rng.choice(DELIVERY_STOPS),
                                     created_at=1.7e9, updated_at=1.7e9))
            stops += arm == "treated" and fate >= 0.8
            day = i % 120
            pk = f"pk{i // 3}"
            out_rows.append(dict(entry_key=f"{goal}|r|Appointment/{i}", goal_id=goal, rule_id="r", journey_id=None,
                                 ruleset_version="v1", patient_key=pk, patient_id=None, origin_event_id=i * events_per_entry + 1,
                                 origin_resource_key=f"Appointment/{i}", trigger_id=None if arm == "held_out" else i + 1,
                                 experiment=goal, period="2026Q4", arm=arm, delivered=delivered, status=status,
                                 destination=DESTINATIONS[i % 3], stopped=None, anchor_month=f"2026-{9 + day // 30:02d}",
                                 anchor_week=f"2026-W{36 + day // 7:02d}", event_id=None, achieved_at=None,
                                 elapsed_s=rng.random() * 14 * 86400 if status == "achieved" else None,
                                 anchor_at=1.7e9, window_opens=1.7e9, window_closes=1.7e9 + 14 * 86400, created_at=1.7e9, updated_at=1.7e9))
            trig_rows.append(dict(rule_id="r", ruleset_version="v1", name="t", purpose="treatment-reminder", destinations="webhook",
                                  patient_key=pk, resource_key=f"Appointment/{i}", origin_key=f"r|event:{i}", event_id=i,
                                  due_at=1.7e9, status=t_status, reason=t_reason, payload="{}", created_at=1.7e9,
                                  updated_at=1.7e9))
            for k in range(events_per_entry):
                ev_rows.append(dict(type="appointment.booked" if k else "appointment.noshow", previous_status=None,
                                    status="booked", resource_type="Appointment", resource_key=f"Appointment/{i}-{k}",
                                    patient_key=pk, resource="{}", source="bench", arrival="message",
                                    occurred_at=1.7e9, created_at=1.7e9))
        with engine.begin() as c:  # in the pipeline's order: the database triggers stamp `outcome.stopped`
            c.execute(insert(T["trigger"]), trig_rows)
            c.execute(insert(T["outcome"]), out_rows)
            c.execute(insert(T["event"]), ev_rows)
            if del_rows:
                c.execute(insert(T["delivery"]), del_rows)
    # what autovacuum gives a production database: statistics, and on PostgreSQL the visibility
    # map that lets the report read its covering index only (an index-only scan)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE")
    print(f"  filled {entries:,} entries, {entries:,} triggers, {entries * events_per_entry:,} events in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return stops


def plans(engine) -> None:
    checks = [(q.FOR_PATIENT, {"patient_key": "pk7"}), (q.PATIENT_EVENTS, {"patient_key": "pk7", "types": ["appointment.booked"]}),
              (q.DUE_TO_CLOSE, {"now": 1.8e9, "limit": 500}), (q.TALLY, {"goal_id": "fuh-7d"})]
    dialect = engine.dialect.name
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for query, params in checks:
            c = query.compiled_for(dialect)
            prefix = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "
            cur.execute(prefix + c.sql, c.params(params))
            plan = " | ".join(str(r[-1] if dialect == "sqlite" else r[0]) for r in cur.fetchall())
            print(f"  plan {query.name}: {plan}")
    finally:
        raw.close()


def run(url: str, entries: int, events_per_entry: int, runs: int) -> None:
    engine = make_engine(url)
    init_db(engine)
    expected_stops = fill(engine, entries, events_per_entry)
    plans(engine)
    for by in ((), ("rule_version", "destination", "month", "week")):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            rows = [r for g, _ in report.goals(engine) for r in report.build(engine, g, by=by)]
            times.append(time.perf_counter() - t0)
        total = sum(r.treated.assigned + (r.held_out.assigned if r.held_out else 0) for r in rows)
        assert total == entries, (total, entries)
        assert sum(r.funnel.eligible for r in rows) == entries
        stopped = sum(sum(r.funnel.suppressed.values()) for r in rows)
        assert stopped == expected_stops, (stopped, expected_stops)
        print(f"  report{' by ' + ','.join(by) if by else ''} over {entries:,} entries ({len(rows)} groups, funnel with "
              f"{stopped:,} suppressed): median {statistics.median(times):.2f} s, max {max(times):.2f} s over {runs} runs")
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--events-per-entry", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--postgres", default=os.environ.get("CARELOOP_TEST_POSTGRES_URL"))
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d:
        print("SQLite:")
        run(f"sqlite:///{d}/report.db", args.entries, args.events_per_entry, args.runs)
        print(f"  database size {os.path.getsize(f'{d}/report.db') / 1e9:.2f} GB")
    if args.postgres:
        import psycopg

        name = f"careloop_bench_{os.getpid()}"
        with psycopg.connect(args.postgres, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        try:
            print("PostgreSQL:")
            run(args.postgres.rsplit("/", 1)[0] + "/" + name, args.entries, args.events_per_entry, args.runs)
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
