"""Three `careloop worker` processes on one PostgreSQL share the due triggers
(``FOR UPDATE SKIP LOCKED``): none fires twice, none is lost, each fires at or after its
due time and within 2 s of it. Bounded: ~150 triggers due over 10 s."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter
from middleware.storage.tables import TriggerRow
from tests.support.hl7msgs import siu
from tests.support.server import wait_until

pytestmark = pytest.mark.postgres

PATIENTS = 150
SPREAD_S = 10.0


def test_three_workers_fire_each_trigger_once_on_time(postgres_url: str, immediate_mappings: Path, sink, tmp_path: Path):
    engine = make_engine(postgres_url)
    init_db(engine)
    rs, diags = load_ruleset(immediate_mappings)
    assert rs is not None, diags
    records = []
    for i in range(PATIENTS):
        mrn, appt = f"MRN09{i:04d}", f"MW{i}"
        for trig, status in (("S12", "Booked"), ("S26", "Noshow")):
            raw = siu(trig, control=f"MW-{i}-{trig}", appt=appt, mrn=mrn, status=status)
            records.append(InboundRecord(source="default", channel="mllp", raw=raw, sha256=f"{i}{trig}", status="received"))
    InboxWriter(engine).write_batch(records)
    Processor(engine, lambda: rs).drain()
    def set_due(base: float, spread: float) -> set[int | None]:
        with Session(engine) as s:
            noshow = list(s.exec(select(TriggerRow).where(TriggerRow.rule_id == "noshow-reengagement",
                                                          TriggerRow.status == "pending")))
            assert len(noshow) == PATIENTS
            for k, t in enumerate(noshow):  # spread the due times over ``spread`` seconds from base
                t.due_at = base + spread * k / PATIENTS
                s.add(t)
            s.commit()
            return {t.id for t in noshow}

    ids = set_due(time.time() + 3600, 0)  # parked until every worker is up (start-up time is not lateness)

    env = {**os.environ, "CARELOOP_WEBHOOK_URL": sink.url + "/hooks", "CARELOOP_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
           "CARELOOP_WORKER_POLL_INTERVAL_S": "0.1", "CARELOOP_LOG_LEVEL": "WARNING"}
    workers = [
        subprocess.Popen([sys.executable, "-m", "middleware", "worker", "--database-url", postgres_url,
                          "--mappings", str(immediate_mappings)], cwd=tmp_path, env=env,
                         stdout=(tmp_path / f"worker{n}.log").open("wb"), stderr=subprocess.STDOUT)
        for n in range(3)
    ]
    try:
        wait_until(lambda: all(b"careloop worker:" in (tmp_path / f"worker{n}.log").read_bytes() for n in range(3)),
                   60, interval=0.1, what="three workers started")
        set_due(time.time() + 1.0, SPREAD_S)
        def all_delivered() -> bool:
            for w in workers:
                assert w.poll() is None, (tmp_path / "worker0.log").read_text()[-2000:]
            return len({r["trigger_id"] for r in sink.received() if r["verified"]}) >= PATIENTS
        wait_until(all_delivered, SPREAD_S + 30, interval=0.2, what="every trigger delivered")
        time.sleep(1.0)  # anything fired twice would show up now
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(15)
            except subprocess.TimeoutExpired:
                w.kill()

    with engine.connect() as c:
        fired = c.execute(text("SELECT id, due_at, fired_at, status FROM \"trigger\" WHERE rule_id = 'noshow-reengagement'")).all()
        per_trigger = dict(c.execute(text("SELECT trigger_id, count(*) FROM delivery GROUP BY trigger_id")).all())
    engine.dispose()
    assert {r.id for r in fired} == ids
    assert all(r.status == "fired" for r in fired), Counter(r.status for r in fired)
    late = [(r.id, r.fired_at - r.due_at) for r in fired if not (0.0 <= r.fired_at - r.due_at <= 2.0)]
    assert not late, f"fired early or more than 2 s late: {late[:5]}"
    assert all(per_trigger.get(i) == 1 for i in ids), "one delivery row per trigger"
    calls = [r for r in sink.received() if r["verified"]]
    by_trigger = Counter(str(r["trigger_id"]) for r in calls)
    assert set(by_trigger) == {str(i) for i in ids}, "none lost"
    assert max(by_trigger.values()) == 1, f"a trigger was sent twice: {by_trigger.most_common(3)}"
