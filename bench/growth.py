"""Benchmark 5: growth. The ingest, pipeline and scheduler benchmarks with 10 thousand and with
1 million rows already stored in every hot table, and the query plans of the hot queries.

One command: ``python bench/growth.py [--runs 3] [--sizes 10000,1000000]``.

For each size a SQLite database is created with careloop's own schema (``init_db``) and filled
directly with synthetic rows (sqlite3 ``executemany``, one transaction per table): ``n`` rows in
each of inbound_message, event, trigger (status mix: 45 % fired, 20 % skipped, 20 % cancelled,
5 % suppressed, 10 % pending due 1 h..30 days ahead), delivery, delivery_attempt, disclosure,
resource_state, patient and resource_identity. Timestamps spread over the last 90 days, keys
shaped like the ones the pipeline writes (hash-like resource keys, so index inserts land all
over the B-trees as in production). Then, per run, for each size in turn (interleaved, so a
change in machine load hits both sizes alike):

* (a) MLLP ingest: ``careloop serve --no-worker``, ``--ingest-messages`` SIU^S12 on 8 connections,
  request -> ACK -> next (the client of ``bench/mllp_ingest.py``);
* (b) whole pipeline: ``careloop serve`` with its worker (``bench/pipeline.py``'s server and
  client: shipped rules, quiet hours off, signed webhook to a local receiver), a burst of
  ``--pipeline-messages`` on 8 connections, messages/s until the last webhook arrived;
* (c) scheduler: ``--due`` triggers already due (each for a stored patient, no destination),
  rate from the scheduler's own timestamps (rows fired or suppressed after the first batch /
  time from the first batch to the last).

Rows the runs add stay (each run's rows are a few thousand on top of ``n``); rows left
``received`` by (a) are marked processed before (b) so the worker does not process them.
After the runs, ``EXPLAIN QUERY PLAN`` of the hot queries (the registry's named queries as compiled for
SQLite, and SQL text copied from the code for the rest, file
named with each) on the largest database; a plan line starting with ``SCAN`` is a full scan and
is flagged. For longer runs: ``--runs 5 --ingest-messages 16000 --pipeline-messages 3000 --due 50000``;
``--db-dir DIR`` keeps the filled databases there and reuses them on the next invocation (the 1M
database is ~5 GB and takes ~2 minutes to fill; without ``--db-dir`` both are removed at the end).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import pipeline as pl  # noqa: E402
from common import REPO, fsync_latency_ms, machine, run_load, siu_message, stop  # noqa: E402
from mllp_ingest import start_careloop, sync_mode  # noqa: E402

from middleware.cli.sink import DEV_WEBHOOK_SECRET  # noqa: E402
from middleware.delivery.sink import SinkServer  # noqa: E402

HOT_TABLES = ("inbound_message", "event", "trigger", "delivery", "delivery_attempt", "disclosure", "resource_state",
              "patient", "resource_identity")
PID_SYS = "urn:oid:2.16.840.1.113883.3.9999.1"
APPT_SYS = "urn:oid:2.16.840.1.113883.3.9999.2"
RULES = (("appointment-reminder-24h", "appointment-reminder", "treatment-reminder"),
         ("appointment-reminder-72h", "appointment-reminder", "treatment-reminder"),
         ("noshow-reengagement", "rebooking-outreach", "care-coordination"),
         ("cancelled-not-rebooked-48h", "rebooking-outreach", "care-coordination"),
         ("tcm-contact-2bd", "tcm-contact", "care-coordination"),
         ("fuh-followup-7d", "fuh-followup", "care-coordination"))
DUE_RULE = "growth-due"
DAY = 86400.0
RETENTION_DAYS = 30  # middleware/settings.py retention_days default
MARKER = "v2"  # bump when fill() changes: a kept database from an older fill is filled again


# -- the synthetic data ------------------------------------------------------------------------

def pk(i: int) -> str:
    return f"{PID_SYS}|MRNG{i:08d}"


def hx(i: int, salt: int = 0) -> str:
    """A 16-hex-digit key, a bijection of i (so keys are unique but land all over an index)."""
    return f"{((i + salt * 1_000_003) * 0x9E3779B97F4A7C15) % 2**64:016x}"


def rkey(i: int) -> str:
    kind = i % 20
    if kind == 0:
        return f"Encounter/e-{hx(i)}"
    if kind == 1:
        return f"CarePlan/c-{hx(i)}"
    return f"Appointment/a-{hx(i)}"


def appt_json(i: int, start: str) -> str:
    rid = hx(i)
    return ('{"resourceType":"Appointment","id":"a-' + rid + '","identifier":[{"type":{"coding":[{"system":'
            '"http://terminology.hl7.org/CodeSystem/v2-0203","code":"PLAC","display":"Placer Identifier"}]},"system":"'
            + APPT_SYS + '","value":"PG' + str(i) + '"},{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/'
            'v2-0203","code":"FILL","display":"Filler Identifier"}]},"system":"' + APPT_SYS + '","value":"FG' + str(i)
            + '"}],"status":"booked","serviceType":[{"coding":[{"system":"urn:careloop:id:cs:LOCAL","code":"CLINIC",'
            '"display":"Clinic visit"}]}],"reasonCode":[{"coding":[{"system":"urn:careloop:id:cs:LOCAL","code":"FOLLOWUP",'
            '"display":"Follow-up"}]}],"start":"' + start + '","minutesDuration":30,"participant":[{"actor":{"reference":'
            '"Patient/p-' + hx(i, 7) + '","type":"Patient","identifier":{"system":"' + PID_SYS + '","value":"MRNG'
            + f"{i:08d}" + '"}},"required":"required","status":"accepted"}]}')


def patient_json(i: int) -> str:
    return ('{"resourceType":"Patient","id":"p-' + hx(i, 7) + '","identifier":[{"type":{"coding":[{"system":'
            '"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},"system":"' + PID_SYS + '","value":"MRNG'
            + f"{i:08d}" + '"}],"name":[{"family":"TESTPATIENT","given":["GROWTH"]}],"gender":"female","birthDate":"1970-01-01"}')


def insert(con: sqlite3.Connection, table: str, cols: str, rows: Iterator[tuple[Any, ...]]) -> None:
    n = cols.count(",") + 1
    con.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({",".join("?" * n)})', rows)


def fill(db: Path, n: int, now: float) -> None:
    """Create careloop's schema in ``db`` and store ``n`` synthetic rows in every hot table."""
    from middleware.storage.db import init_db, make_engine

    eng = make_engine(f"sqlite:///{db}")
    init_db(eng)
    eng.dispose()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1000000")
    span = 90 * DAY

    def at(i: int) -> float:  # spread over the last 90 days, in id order
        return now - span + span * i / n

    # bodies older than retention_days are already blanked, as the hourly purge leaves them in production
    # (middleware/delivery/retention.py: raw/ack NULL, event.resource and finished triggers' payload '{}')
    cutoff = now - RETENTION_DAYS * DAY

    raw_head = (b"MSH|^~\\&|SCHED|HOSP|CARELOOP|CL|20260101120000+0000||SIU^S12^SIU_S12|")
    raw_tail = (b"|P|2.5.1\rSCH|P1^SCHED|F1^SCHED||||FOLLOWUP^Follow-up^LOCAL|||30|MIN|^^30^20260102120000+0000^"
                b"20260102123000+0000||||||||||||||Booked\rPID|1||MRNG00000001^^^HOSP^MR||TESTPATIENT^GROWTH||19700101|F\r"
                b"RGS|1\rAIS|1||CLINIC^Clinic visit^LOCAL|20260102120000+0000|||30|MIN\r")
    ack = b"MSH|^~\\&|CARELOOP|CL|SCHED|HOSP|20260101120000+0000||ACK^S12^ACK|CL20260101120000000000|P|2.5.1\rMSA|AA|G1\r"

    def inbound() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            st = "processed" if i % 50 else "ignored"
            cid = f"G{i}-{hx(i)}"
            old = at(i) < cutoff
            yield ("default", "mllp", at(i), None if old else raw_head + cid.encode() + raw_tail, hx(i, 1) * 4,
                   f"SCHED|HOSP|{cid}", cid, "SIU^S12", st, None, None if old else ack, None, at(i) + 0.5, 1)

    def events() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            r = rkey(i)
            typ = ("appointment.booked", "appointment.rescheduled", "appointment.cancelled", "appointment.noshow")[i % 4]
            body = "{}" if at(i) + 0.5 < cutoff else appt_json(i, "2026-01-02T12:00:00+00:00")
            yield (typ, None if i % 4 == 0 else "booked", typ.split(".")[1], r.split("/")[0], r, pk(i), body, "default",
                   "message", at(i), at(i) + 0.5, i + 1)

    def states() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            r = rkey(i)
            yield (r, r.split("/")[0], pk(i), ("booked", "fulfilled", "cancelled", "noshow")[i % 4], None, None, at(i),
                   appt_json(i, "2026-01-02T12:00:00+00:00"), "default", 0, at(i) + 0.5)

    def patients() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            merged = pk(i + 1) if i % 1000 == 999 and i + 1 < n else None
            yield (pk(i), f"p-{hx(i, 7)}", patient_json(i), merged, at(i) + 0.5, at(i))

    def identities() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            yield (f"{APPT_SYS}|FG{i}-{hx(i, 2)}", rkey(i))

    def triggers() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            rule, kind, purpose = RULES[i % len(RULES)]
            m = i % 20
            created = at(i) + 0.5
            if m < 9:
                status, due, fired = "fired", created, created + 0.01
            elif m < 13:
                status, due, fired = "skipped", created - DAY, None
            elif m < 17:
                status, due, fired = "cancelled", created + DAY, None
            elif m < 18:
                status, due, fired = "suppressed", created, None
            else:
                status, due, fired = "pending", now + 3600 + (i * 7919 % (30 * 86400)), None
            purged = status != "pending" and (fired or created) < cutoff and i % 100 != 99  # 99: delivery pending
            yield (rule, "growth", "appointment_reminder", purpose, "webhook", pk(i), rkey(i), f"{rule}|event:{i + 1}",
                   str(i + 1), i + 1, due, status, "synthetic", f"{rule}|{pk(i)}" if i % 4 == 0 else None,
                   f"resource:{rkey(i)}", kind,
                   "{}" if purged else '{"appointment_start":"2026-01-02T12:00:00+00:00","reminder":"24h"}',
                   None if purged else '["synthetic growth row"]', created, fired or created, fired)

    def deliveries() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            m = i % 100
            t = at(i) + 1
            if m < 92:
                status, nxt, done = "delivered", t, t + 0.02
            elif m < 95:
                status, nxt, done = "dead", t + 3600, None
            elif m < 99:
                status, nxt, done = "suppressed", t, None
            else:
                status, nxt, done = "pending", now + 30 * DAY + i % 3600, None
            yield (i + 1, "webhook", f"cl_{hx(i, 3)}{hx(i, 4)}", status, 1, nxt, None, 200 if done else None, t, t, done,
                   None, None)

    def attempts() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            yield (i + 1, at(i) + 1, "delivered" if i % 100 < 92 else "failed", 200 if i % 100 < 92 else 503, None, 3.1)

    fields = ('["data.appointment_service","data.appointment_start","data.contact_key","data.location","data.occurred_at",'
              '"data.purpose","data.reminder","data.rule_id","data.trigger_id","timestamp","type"]')

    def disclosures() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            rule, _, purpose = RULES[i % len(RULES)]
            yield (i + 1, i + 1, pk(i), "webhook", fields, hx(i, 5) * 4, purpose, rule, "growth", at(i) + 1, "delivered",
                   383, "POST /hooks", 1)

    plan: list[tuple[str, str, Callable[[], Iterator[tuple[Any, ...]]]]] = [
        ("inbound_message", "source, channel, received_at, raw, sha256, dedup_key, control_id, message_type, status, error,"
                            " ack, meta, processed_at, attempts", inbound),
        ("event", "type, previous_status, status, resource_type, resource_key, patient_key, resource, source, arrival,"
                  " occurred_at, created_at, inbound_id", events),
        ("resource_state", "key, resource_type, patient_key, status, version, last_updated, occurred_at, resource, source,"
                           " deleted, updated_at", states),
        ("patient", "key, fhir_id, resource, merged_into, updated_at, occurred_at", patients),
        ("resource_identity", "identifier, resource_key", identities),
        ("trigger", "rule_id, ruleset_version, name, purpose, destinations, patient_key, resource_key, origin_key,"
                    " resource_version, event_id, due_at, status, reason, dedup_key, cancel_scope, message_kind, payload,"
                    " explain, created_at, updated_at, fired_at", triggers),
        ("delivery", "trigger_id, destination, idempotency_key, status, attempts, next_attempt_at, last_error,"
                     " last_status_code, created_at, updated_at, delivered_at, locked_until, locked_by", deliveries),
        ("delivery_attempt", "delivery_id, at, outcome, status_code, error, duration_ms", attempts),
        ("disclosure", "delivery_id, trigger_id, patient_key, destination, fields, body_sha256, purpose, rule_id,"
                       " ruleset_version, sent_at, outcome, body_bytes, request_target, attempt", disclosures),
    ]
    for table, cols, gen in plan:
        t0 = time.perf_counter()
        con.execute("BEGIN")
        insert(con, table, cols, gen())
        con.execute("COMMIT")
        if n >= 100_000:
            print(f"  filled {table}: {n:,} rows in {time.perf_counter() - t0:.1f}s", flush=True)
    con.execute("INSERT OR REPLACE INTO kv (key, value, updated_at) VALUES ('bench.growth.rows', ?, ?)", (f"{n}:{MARKER}", now))
    con.execute("PRAGMA journal_mode=WAL")
    con.close()


def row_counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return {t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in HOT_TABLES}
    finally:
        con.close()


def prepared(db_dir: Path, n: int) -> Path:
    db = db_dir / f"growth-{n}.db"
    if db.exists():
        try:
            con = sqlite3.connect(db)
            ok = con.execute("SELECT value FROM kv WHERE key = 'bench.growth.rows'").fetchone() == (f"{n}:{MARKER}",)
            con.close()
            if ok:
                print(f"reusing {db}")
                return db
        except sqlite3.Error:
            pass
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    fill(db, n, time.time())
    print(f"filled {db.name}: {n:,} rows in each of {len(HOT_TABLES)} tables in {time.perf_counter() - t0:.1f}s"
          f" ({db.stat().st_size / 2**20:,.0f} MiB)", flush=True)
    return db


def execute(db: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    con = sqlite3.connect(db, timeout=60)
    try:
        con.execute(sql, params)
        con.commit()
    finally:
        con.close()


# -- the three measurements --------------------------------------------------------------------

def ingest(db: Path, run: int, messages: int) -> float:
    proc, port = start_careloop(db)
    try:
        msgs = [siu_message(f"GR{run}-{i}-{time.time_ns()}", mrn=f"MRN{i % 5000:06d}", appt=f"GA{run}-{i}")
                for i in range(messages)]
        rate = run_load(port, msgs, 8).rate
    finally:
        stop(proc)
    # processing is not part of (a): the worker of (b) must not find these
    execute(db, "UPDATE inbound_message SET status = 'ignored', processed_at = ? WHERE status = 'received'", (time.time(),))
    return rate


def pipeline_rate(db: Path, run: int, messages: int, settle: float) -> float:
    work = Path(tempfile.mkdtemp(prefix="careloop-growth-pipe-"))
    try:
        with SinkServer([DEV_WEBHOOK_SECRET]) as sink:
            procs, mllp = pl.start_server("careloop", work, sink.url + "/hooks", f"sqlite:///{db}", 0)
            try:
                time.sleep(settle)  # the start-up retention purge (timed on its own) is over before the burst
                client = pl.Client(mllp)
                b0 = time.perf_counter()
                asyncio.run(pl.burst(mllp, messages, 8, client, 1_000_000 + run * 100_000))
                done = pl.wait_delivered(sink, messages, 600)
                return messages / (done - b0)
            finally:
                procs.terminate()
                procs.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scheduler_rate(db: Path, run: int, due: int, n_patients: int, settle: float) -> float:
    """Start ``careloop serve``, let it settle, store ``due`` due triggers; fired (or suppressed) per second."""
    work = Path(tempfile.mkdtemp(prefix="careloop-growth-sched-"))
    q = ("SELECT count(*), min(updated_at), max(updated_at) FROM \"trigger\" WHERE id >= ? AND rule_id = ?"
         " AND status <> 'pending'")
    try:
        with SinkServer([DEV_WEBHOOK_SECRET]) as sink:
            procs, _ = pl.start_server("careloop", work, sink.url + "/hooks", f"sqlite:///{db}", 0)
            try:
                time.sleep(settle)
                now = time.time()
                con = sqlite3.connect(db, timeout=60)
                cols = ("rule_id, ruleset_version, name, purpose, destinations, patient_key, resource_key, origin_key,"
                        " due_at, status, payload, created_at, updated_at, message_kind")
                con.execute("BEGIN IMMEDIATE")
                first_id = int(con.execute('SELECT coalesce(max(id), 0) FROM "trigger"').fetchone()[0]) + 1
                con.executemany(  # each for a stored patient (so the checks find rows), no destination
                    f'INSERT INTO "trigger" ({cols}) VALUES ({",".join("?" * 14)})',
                    ((DUE_RULE, "growth", "growth_due", "care-coordination", "", pk(i % n_patients),
                      f"Appointment/due-{run}-{i}", f"{DUE_RULE}|{run}|{i}|{now}", now - 60 + (i % 1000) * 1e-3,
                      "pending", "{}", now, now, "growth") for i in range(due)))
                con.commit()
                qp: tuple[Any, ...] = (first_id, DUE_RULE)
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:  # the scheduler polls at least once a second
                    n, first, last = con.execute(q, qp).fetchone()
                    if n >= due:
                        break
                    time.sleep(0.1)
                # rate from the scheduler's own clock: rows done after its first batch, first -> last batch
                after_first = con.execute(q.replace("count(*), min(updated_at), max(updated_at)", "count(*)")
                                          + " AND updated_at > ?", qp + (first,)).fetchone()[0]
                con.close()
            finally:
                procs.terminate()
                procs.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # these must not count against the next run's caps
    execute(db, "UPDATE \"trigger\" SET status = 'cancelled' WHERE id >= ? AND rule_id = ?", qp)
    if n < due:
        raise RuntimeError(f"only {n}/{due} fired within 300 s")
    return after_first / (last - first) if last and last > first else float("nan")


def purge_seconds(db: Path) -> float:
    """One retention purge (what ``serve`` runs at start and hourly: the window since the last run, in chunks)."""
    from middleware.delivery.retention import purge
    from middleware.storage.db import make_engine

    eng = make_engine(f"sqlite:///{db}")
    try:
        t = time.perf_counter()
        purge(eng, now=time.time(), days=RETENTION_DAYS)
        return time.perf_counter() - t
    finally:
        eng.dispose()


# -- the query plans ---------------------------------------------------------------------------

PK = "urn:oid:2.16.840.1.113883.3.9999.1|MRNG00000042"
PKS = (PK, PK[:-1] + "3", PK[:-1] + "4")
RK = "Appointment/a-0000000000000042"
#: example parameters of the registry's named queries (``middleware/storage/queries``): their plans
#: are read from the SQL the code runs, compiled for SQLite by the registry itself
EXAMPLES: dict[str, dict[str, Any]] = {
    "inbox.claim": {"n": 200},
    "inbox.next": {"n": 200},
    "inbox.seen": {"keys": ["SCHED|HOSP|G1", "SCHED|HOSP|G2", "SCHED|HOSP|G3"]},
    "inbox.done": {"status": "processed", "error": None, "processed_at": 0.0, "id": 42},
    "ingest.patient_link": {"key": PK},
    "ingest.patient_resource": {"key": PK},
    "ingest.patient_merge": {"retired": PK, "surviving": PKS[1], "now": 0.0},
    "ingest.state_repoint": {"retired": PK, "surviving": PKS[1]},
    "ingest.trigger_repoint": {"retired": PK, "surviving": PKS[1]},
    "ingest.identity_get": {"identifier": f"{APPT_SYS}|FG1"},
    "ingest.identity_any": {"identifiers": [f"{APPT_SYS}|FG1", f"{APPT_SYS}|PG1"]},
    "ingest.state_get": {"key": RK},
    "ingest.care_resources": {"patient_key": PK},
    "ingest.event_resource": {"id": 42},
    "ingest.pending_for_patient": {"rule_id": "appointment-reminder-24h", "key": PK, "since": 0.0},
    "ingest.pending_for_resource": {"rule_id": "appointment-reminder-24h", "key": RK, "since": 0.0},
    "ingest.trigger_cancel": {"now": 0.0, "reason": "x", "id": 42},
    "ingest.same_rule_pending": {"rule_id": "appointment-reminder-24h", "resource_key": RK},
    "ingest.trigger_duplicate": {"dedup_key": f"appointment-reminder-24h|{PK}", "since": 0.0},
    "ingest.trigger_skip": {"reason": "x", "now": 0.0, "id": 42},
    "ingest.trigger_move": {"due_at": 0.0, "payload": "{}", "reason": "x", "now": 0.0, "id": 42},
    "kv.get": {"key": "bench.growth.rows"},
    "kv.prefix": {"prefix": "fhir.pending."},
    "kv.delete_until": {"key": "fhir.pending.x.Appointment", "until": 0.0},
    # the scheduler, the fire- and send-time privacy checks, the delivery worker, retention
    "scheduler.next_due": {},
    "scheduler.claim": {"now": 0.0, "limit": 500},
    "scheduler.fired_counts": {"pks": list(PKS), "day_from": 0.0, "week_from": 0.0},
    "scheduler.mark_fired": {"t_id": 42, "t_now": 0.0},
    "privacy.merges_touching": {"pks": list(PKS)},
    "privacy.patient_keys": {"pks": list(PKS)},
    "privacy.active_suppressions": {"pks": list(PKS)},
    "privacy.marketing_authorized": {"pks": list(PKS)},
    "privacy.active_consents": {"pks": list(PKS)},
    "privacy.patient_resources": {"pks": list(PKS)},
    "privacy.care_resources": {"pks": list(PKS), "care_types": ["Encounter", "CarePlan"]},
    "delivery.claim_due": {"now": 0.0, "blocked": ["x"], "limit": 200},
    "delivery.claim_expired": {"now": 0.0, "blocked": [], "limit": 200},
    "delivery.lease": {"ids": [1, 2], "now": 0.0, "until": 0.0, "owner": "h"},
    "delivery.triggers_of": {"ids": [1, 2]},
    "delivery.lease_owners_on_host": {"host": "vm:", "now": 0.0},
    "delivery.paused_keys": {},  # a LIKE prefix on kv: a scan of kv (tens of rows), as before the registry
    "delivery.to_record": {"ids": [1, 2]},
    "delivery.set_delivered": {"p_id": 1, "p_code": 200, "p_now": 0.0},
    "delivery.intents_of": {"keys": ["k1", "k2"]},
    "delivery.ledger_of": {"keys": ["k1", "k2"]},
    "retention.pick_inbound": {"lo": 0.0, "cutoff": 1.0, "limit": 2000},
    "retention.pick_events": {"lo": 0.0, "cutoff": 1.0, "limit": 2000},
    "retention.pick_triggers": {"lo": 0.0, "cutoff": 1.0, "limit": 2000, "busy": ["pending", "sending"]},
    "retention.purge_events": {"ids": [1, 2]},
}


def registry_queries() -> list[tuple[str, str, tuple[Any, ...]]]:
    """(name, SQLite SQL, parameters) of every registered query with example parameters."""
    import middleware.storage.queries  # noqa: F401  (registers every named query)
    from middleware.storage.sql import REGISTRY

    out = []
    for name, params in EXAMPLES.items():
        c = REGISTRY[name].compiled_for("sqlite")
        out.append((f"query {name}", c.sql.replace("\n", " "), c.params(params)))
    return out


#: the queries not yet in the registry: (where in the code, SQL text as the code runs it, example
#: parameters), Core statements as SQLAlchemy's SQLite compiler renders them
QUERIES: list[tuple[str, str, tuple[Any, ...]]] = [
]


def explain(db: Path) -> list[tuple[str, str, str]]:
    """Print each hot query's plan; return the (where, sql, plan line) of every full scan."""
    con = sqlite3.connect(db, timeout=60)
    scans = []
    try:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for where, sql, params in registry_queries() + QUERIES:
            print(f"\n{where}\n  {sql}")
            for row in con.execute("EXPLAIN QUERY PLAN " + sql, params):
                detail = row[-1]
                # a scan of a stored table; not of json_each (the list parameter itself, ``any_of``) nor
                # of a CTE's or subquery's own rows (the recursive merge walk reads the table by index)
                words = detail.split()
                flag = "   <-- FULL SCAN" if words[:1] == ["SCAN"] and len(words) > 1 and words[1] in tables else ""
                print(f"    {detail}{flag}")
                if flag:
                    scans.append((where, sql, detail))
    finally:
        con.close()
    return scans


def fmt(values: list[float]) -> str:
    v = [x for x in values if x == x]
    if not v:
        return "n/a"
    return f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="10000,1000000", help="rows per hot table, comma-separated (first = baseline)")
    ap.add_argument("--ingest-messages", type=int, default=8000)
    ap.add_argument("--pipeline-messages", type=int, default=1500)
    ap.add_argument("--due", type=int, default=20000, help="due triggers fired per scheduler run; many times its 500-row batch (the rate runs from its first batch to its last)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds between `serve` answering and (b)/(c) starting (its start-up purge is timed apart)")
    ap.add_argument("--db-dir", type=Path, help="keep the filled databases here (reused when present)")
    ap.add_argument("--only", default="ingest,pipeline,scheduler,explain")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    only = set(args.only.split(","))
    db_dir = args.db_dir or Path(tempfile.mkdtemp(prefix="careloop-bench-growth-"))
    db_dir.mkdir(parents=True, exist_ok=True)
    print(f"# growth  {machine()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    dbs = {n: prepared(db_dir, n) for n in sizes}
    print(f"careloop storage: SQLite WAL, PRAGMA synchronous={sync_mode(dbs[sizes[0]])}; fdatasync latency on this disk"
          f" {fsync_latency_ms(db_dir):.2f} ms (median of 200)")
    for n, db in dbs.items():
        print(f"rows stored before the runs, {n:,} database: " + ", ".join(f"{t} {c:,}" for t, c in row_counts(db).items()))
    purges = {n: [purge_seconds(db) for _ in range(2)] for n, db in dbs.items()}
    print("retention purge with nothing left to purge (run by `serve` at start and hourly, in chunks of 2,000 rows"
          " per write transaction): " + "; ".join(f"{n:,} rows {min(p):.2f} s" for n, p in purges.items()), flush=True)
    benches: list[tuple[str, str, Callable[[Path, int, int], float]]] = []
    if "ingest" in only:
        benches.append(("ingest", f"(a) MLLP ingest, 8 connections, {args.ingest_messages:,} messages, msg/s",
                        lambda db, run, n: ingest(db, run, args.ingest_messages)))
    if "pipeline" in only:
        benches.append(("pipeline", f"(b) whole pipeline, burst of {args.pipeline_messages:,} on 8 connections, msg/s",
                        lambda db, run, n: pipeline_rate(db, run, args.pipeline_messages, args.settle)))
    if "scheduler" in only:
        benches.append(("scheduler", f"(c) scheduler, {args.due:,} due triggers, fired/s",
                        lambda db, run, n: scheduler_rate(db, run, args.due, n, args.settle)))
    res: dict[str, dict[int, list[float]]] = {b: {n: [] for n in sizes} for b, _, _ in benches}
    loads: list[float] = []
    t_start = time.perf_counter()
    for run in range(args.runs):
        for name, _, fn in benches:
            for n in sizes if run % 2 == 0 else reversed(sizes):  # alternate which size goes first
                try:
                    r = fn(dbs[n], run, n)
                except (SystemExit, RuntimeError, httpx.HTTPError, subprocess.SubprocessError) as e:
                    print(f"run {run + 1} {name:9s} {n:>9,} rows: FAILED {e}", flush=True)
                    r = float("nan")
                res[name][n].append(r)
                loads.append(os.getloadavg()[0])
                print(f"run {run + 1} {name:9s} {n:>9,} rows: {r:8,.0f}/s   load {loads[-1]:.2f}", flush=True)
    print(f"\nruns took {time.perf_counter() - t_start:.0f}s; load average (1 min) during the runs: "
          f"{min(loads, default=0):.2f}-{max(loads, default=0):.2f} on {os.cpu_count()} cores")
    base, big = sizes[0], sizes[-1]
    print(f"\nmedian (min-max) of {args.runs} runs        {base:>12,} rows   {big:>12,} rows   change   (target: drop <= 20%)")
    for name, label, _ in benches:
        a, b = res[name][base], res[name][big]
        va, vb = [x for x in a if x == x], [x for x in b if x == x]
        change = (statistics.median(vb) / statistics.median(va) - 1) * 100 if va and vb else float("nan")
        verdict = "n/a" if change != change else ("met" if change >= -20 else "NOT MET")
        print(f"{label}\n    {fmt(a):>34s}   {fmt(b):>22s}   {change:+5.1f}%   {verdict}")
    for n, db in dbs.items():
        print(f"rows stored after the runs, {n:,} database: " + ", ".join(f"{t} {c:,}" for t, c in row_counts(db).items()))
    if "explain" in only:
        print(f"\n## EXPLAIN QUERY PLAN on the {big:,}-row database (SQLite {sqlite3.sqlite_version}, no ANALYZE:"
              " careloop does not run it, so these are the planner's default choices)")
        scans = explain(dbs[big])
        print(f"\nfull scans (plan lines starting with SCAN): {len(scans)}")
        for where, sql, detail in scans:
            print(f"  {where}: {detail}\n      {sql}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.db_dir:
        shutil.rmtree(db_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
