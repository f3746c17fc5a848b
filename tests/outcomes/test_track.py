"""Outcome tracking against a real database (SQLite and PostgreSQL): entries opened once,
settled by later events read by index, closed windows, late messages, persisted arms."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from middleware.model import ResourceChange
from middleware.outcomes.engine import CompiledGoal
from middleware.outcomes.holdout import Arm
from middleware.outcomes.track import GoalBook, arm_for, close_due, holdout_key, on_event, open_entry
from middleware.pipeline.changes import apply_change
from middleware.rules.fhirpath import ValueSets
from middleware.rules.goal import Goal
from middleware.storage.db import init_db, make_engine
from middleware.storage.sql import unit

ZONE = "America/New_York"
GOAL = Goal.model_validate({
    "id": "fuh-7d", "on": ["encounter.finished"], "where": "type.memberOf('bh')", "anchor": "period.end",
    "window": {"from": 1, "to": 7},
    "exclude": [{"on": ["encounter.in-progress"], "where": "class.code = 'IMP'", "reason": "readmission"}]})


def book() -> GoalBook:
    b = GoalBook(zone=ZONE)
    b.goals["fuh-7d"] = CompiledGoal(GOAL, ValueSets({"bh": {"|bh"}}), zone=ZONE)
    b.by_rule["fuh-followup-7d"] = "fuh-7d"
    return b


def enc(eid: str, start: str, end: str | None, status: str, cls: str = "AMB", code: str = "bh") -> dict[str, Any]:
    period = {"start": start} | ({"end": end} if end else {})
    return {"resourceType": "Encounter", "id": eid, "status": status, "class": {"code": cls},
            "type": [{"coding": [{"code": code}]}], "period": period, "subject": {"reference": "Patient/p1"}}


def store(engine: Any, res: dict[str, Any], at: datetime) -> tuple[int, str]:
    with unit(engine, write=True) as u:
        out = apply_change(u, ResourceChange(res, None, "pk-1", "default", "message", at), None,  # type: ignore[arg-type]
                           now=at, evaluate_rules=False)
    assert out.key is not None
    return out.events[-1].id, out.key


@pytest.fixture
def engine(db_url: str) -> Any:
    eng = make_engine(db_url)
    init_db(eng)
    yield eng
    eng.dispose()


def outcome_rows(engine: Any) -> list[tuple[Any, ...]]:
    from sqlalchemy import text

    with engine.connect() as c:  # test-side inspection
        return [tuple(r) for r in c.execute(text("SELECT entry_key, status, event_id, elapsed_s FROM outcome ORDER BY id"))]


def test_entry_is_settled_by_a_later_visit_and_opened_once(engine: Any) -> None:
    b = book()
    t0 = datetime(2026, 3, 16, 13, 0, tzinfo=UTC)  # 09:00 EDT
    discharge = enc("adm1", "2026-03-10T08:00:00-04:00", "2026-03-16T09:00:00-04:00", "finished", cls="IMP", code="x")
    origin_id, origin_key = store(engine, discharge, t0)
    for _ in range(2):  # reprocessing opens nothing new
        with unit(engine, write=True) as u:
            open_entry(u, b, rule_id="fuh-followup-7d", ruleset_version="v1", patient_key="pk-1", patient_id=None,
                       origin_event_id=origin_id, origin=discharge, origin_key=origin_key, trigger_id=None, now=t0)
    assert [r[1] for r in outcome_rows(engine)] == ["pending"]
    # a visit late on day 7 (16:30 local) arrives
    vid, _ = store(engine, enc("v1", "2026-03-23T16:30:00-04:00", None, "finished"), t0 + timedelta(days=7, hours=8))
    with unit(engine, write=True) as u:
        assert on_event(u, b, "pk-1", "encounter.finished", t0 + timedelta(days=7, hours=8)) == 1
    (key, status, event_id, elapsed), = outcome_rows(engine)
    assert key == f"fuh-7d|-|{origin_key}"
    assert (status, event_id) == ("achieved", vid)
    assert elapsed == pytest.approx(timedelta(days=7, hours=7, minutes=30).total_seconds())
    # an unrelated event type costs nothing and changes nothing
    with unit(engine, write=True) as u:
        assert on_event(u, b, "pk-1", "appointment.booked", t0) == 0


def test_window_close_then_late_message(engine: Any) -> None:
    b = book()
    t0 = datetime(2026, 3, 16, 13, 0, tzinfo=UTC)
    discharge = enc("adm2", "2026-03-10T08:00:00-04:00", "2026-03-16T09:00:00-04:00", "finished", cls="IMP", code="x")
    origin_id, origin_key = store(engine, discharge, t0)
    with unit(engine, write=True) as u:
        open_entry(u, b, rule_id="fuh-followup-7d", ruleset_version="v1", patient_key="pk-1", patient_id=None,
                   origin_event_id=origin_id, origin=discharge, origin_key=origin_key, trigger_id=None, now=t0)
    with unit(engine, write=True) as u:
        assert close_due(u, b, t0 + timedelta(days=3)) == 0  # window still open
        assert close_due(u, b, t0 + timedelta(days=9)) == 1
    assert outcome_rows(engine)[0][1] == "missed"
    # the day-5 visit's message arrives on day 10: the entry becomes achieved
    late = t0 + timedelta(days=10)
    store(engine, enc("v2", "2026-03-21T10:00:00-04:00", None, "finished"), late)
    with unit(engine, write=True) as u:
        on_event(u, b, "pk-1", "encounter.finished", late)
    assert outcome_rows(engine)[0][1] == "achieved"


def test_holdout_arm_is_persisted_first_wins(engine: Any) -> None:
    key = holdout_key("test-secret-of-enough-length")
    with unit(engine, write=True) as u:
        first = arm_for(u, key, "pt_abc", "noshow-rebook", "2026Q4", 0.5, 1.0)
    with unit(engine, write=True) as u:  # a rule edit changing the share never moves the patient
        assert arm_for(u, key, "pt_abc", "noshow-rebook", "2026Q4", 0.01 if first is Arm.HELD_OUT else 0.99, 2.0) is first
    arms = set()
    with unit(engine, write=True) as u:
        for i in range(60):
            arms.add(arm_for(u, key, f"pt_{i}", "noshow-rebook", "2026Q4", 0.5, 3.0))
    assert arms == {Arm.TREATED, Arm.HELD_OUT}
