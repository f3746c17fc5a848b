"""Processing on PostgreSQL makes few round trips per message (issue 12): counted from libpq's
protocol trace (``bench/roundtrips.py``), with the shipped rules, for booked appointments of new
patients (each fires a reminder) and their no-shows (each cancels and fires)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter
from middleware.storage.tables import TriggerRow
from tests.support.hl7msgs import siu

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from roundtrips import Counter  # noqa: E402

pytestmark = pytest.mark.postgres

N = 20


def test_processing_round_trips_per_message_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    init_db(engine)
    rs, diags = load_ruleset(REPO / "mappings")
    assert rs is not None, diags
    records = []
    for i in range(N):
        for trig, status in (("S12", "Booked"), ("S26", "Noshow")):
            raw = siu(trig, control=f"RT-{i}-{trig}", appt=f"RT{i}", mrn=f"MRN07{i:04d}", status=status)
            records.append(InboundRecord(source="default", channel="mllp", raw=raw, sha256=f"{i}{trig}", status="received"))
    InboxWriter(engine).write_batch(records)
    counter = Counter(engine)
    processor = Processor(engine, lambda: rs)
    assert processor.drain() == 2 * N and processor.failed == 0
    engine.dispose()  # the connections are idle: their traces are complete
    counts = counter.take()
    check = make_engine(postgres_url)
    with check.connect() as conn:
        triggers = conn.execute(select(func.count()).select_from(TriggerRow)).scalar_one()
        cancelled = conn.execute(select(func.count()).select_from(TriggerRow).where(
            TriggerRow.status == "cancelled", TriggerRow.reason.like("cancelled before its due time:%"))).scalar_one()
    check.dispose()
    assert triggers >= 2 * N  # a reminder per booking, and what each no-show fires
    # each no-show cancels its booking's pending reminders (two per booking with the shipped rules),
    # read with one statement for all the rules it cancels (40 on main before that change too)
    assert cancelled == 2 * N, cancelled
    per_message = counts.round_trips / (2 * N)
    # 30 before issue 12's named queries in pipeline mode; about 4-6 after (a batch's BEGIN,
    # claim and COMMIT are shared by its messages)
    assert per_message <= 8, f"{per_message:.1f} round trips per message ({counts})"
    assert counts.statements > counts.round_trips  # statements do travel together
    # each statement costs a send and a poll in psycopg even inside a round trip: an event's
    # cancellations read their pending triggers in one statement per scope, and its decisions their
    # same-rule pending triggers in one (27.5 per message here before, 21.9 after)
    per_statement = counts.statements / (2 * N)
    assert per_statement <= 24, f"{per_statement:.1f} statements per message ({counts})"
