"""Found by the sandbox ``outcomes`` scenario: with ``anchor: start`` and ``counted_at:
recorded``, the missed visit's *own* booking counts as the "new booking" when it was made on
the visit's day (a same-day visit): the entry settles ``achieved`` at window close although
the patient never rebooked. Fixed: with ``counted_at: recorded`` only changes recorded after the
entry's own change count (``CompiledGoal.decide_entry``)."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import text

from middleware.outcomes.track import close_windows
from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter
from tests.outcomes.test_pipeline_outcomes import RULE
from tests.support.hl7msgs import siu


def test_a_same_day_booking_of_the_missed_visit_is_not_a_rebooking(db_url: str, mappings_dir: Path) -> None:
    for f in (mappings_dir / "rules").glob("*.yaml"):
        f.unlink()
    (mappings_dir / "rules" / "winback.yaml").write_text(RULE)
    rs, diags = load_ruleset(mappings_dir)
    assert rs is not None, [str(d) for d in diags]
    engine = make_engine(db_url)
    init_db(engine)
    day = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=40)
    start = day + timedelta(hours=3)  # 15:00 UTC, booked at 12:00 UTC the same day (America/New_York too)
    msgs = [siu("S12", control="SB1", mrn="MRN900001", appt="SA1", start=start, sent=day),
            siu("S26", control="SN1", mrn="MRN900001", appt="SA1", start=start, status="Noshow",
                sent=start + timedelta(hours=2))]
    InboxWriter(engine).write_batch([InboundRecord(source="default", channel="mllp", raw=m, status="received",
                                                   sha256=hashlib.sha256(m).hexdigest()) for m in msgs])
    Processor(engine, lambda: rs).drain()
    while close_windows(engine, rs, datetime.now(timezone.utc)):
        pass
    with engine.connect() as c:
        statuses = [r[0] for r in c.execute(text("SELECT status FROM outcome"))]
    assert statuses == ["missed"]  # nobody rebooked
