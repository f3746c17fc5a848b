"""Goals written in the rule language, matched against later events (FUH-aligned follow-up,
no-show rebooked, reminder kept)."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from middleware.outcomes.engine import CompiledGoal, LaterEvent
from middleware.outcomes.match import Outcome
from middleware.rules.fhirpath import ValueSets
from middleware.rules.goal import Goal

NY = ZoneInfo("America/New_York")
VS = ValueSets({"fuh-followup-visit": {"http://www.ama-assn.org/go/cpt|90832", "|bh-outpatient"}})

FUH7 = Goal.model_validate({
    "id": "fuh-7d", "aligned_with": "NCQA HEDIS FUH 7-day (aligned)",
    "on": ["encounter.finished", "encounter.in-progress"],
    "where": "type.memberOf('fuh-followup-visit')",
    "anchor": "period.end",
    "window": {"from": 1, "to": 7},
    "exclude": [{"on": ["encounter.in-progress"], "where": "class.code = 'IMP'", "reason": "readmission"}],
})
DISCHARGE = {"resourceType": "Encounter", "id": "adm1", "status": "finished", "class": {"code": "IMP"},
             "period": {"start": "2026-03-10T08:00:00-04:00", "end": "2026-03-16T09:00:00-04:00"}}


def visit(i: int, start: str, code: str = "90832", cls: str = "AMB", etype: str = "encounter.finished") -> LaterEvent:
    res: dict[str, Any] = {"resourceType": "Encounter", "id": f"v{i}", "class": {"code": cls},
                           "type": [{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": code}]}],
                           "period": {"start": start}}
    # arrival times are deliberately unrelated to the clinical time (late messages)
    return LaterEvent(i, etype, "Encounter", f"Encounter/v{i}", res, datetime(2026, 4, 20, tzinfo=NY))


def test_fuh_visit_late_on_day_7_counts_and_same_day_does_not() -> None:
    g = CompiledGoal(FUH7, VS, zone="America/New_York")
    now = datetime(2026, 4, 30, tzinfo=NY)
    res, win = g.decide_entry(DISCHARGE, "Encounter/adm1", [visit(1, "2026-03-16T15:00:00-04:00")], now)
    assert res.outcome is Outcome.MISSED
    res, _ = g.decide_entry(DISCHARGE, "Encounter/adm1", [visit(2, "2026-03-23T16:30:00-04:00")], now)
    assert res.outcome is Outcome.ACHIEVED and res.event_id == 2
    assert res.elapsed is not None and res.elapsed.days == 7
    res, _ = g.decide_entry(DISCHARGE, "Encounter/adm1", [visit(3, "2026-03-24T08:00:00-04:00")], now)
    assert res.outcome is Outcome.MISSED


def test_fuh_non_qualifying_visit_and_readmission() -> None:
    g = CompiledGoal(FUH7, VS, zone="America/New_York")
    now = datetime(2026, 4, 30, tzinfo=NY)
    res, _ = g.decide_entry(DISCHARGE, "Encounter/adm1", [visit(4, "2026-03-18T10:00:00-04:00", code="99213")], now)
    assert res.outcome is Outcome.MISSED
    readmit = visit(5, "2026-03-18T10:00:00-04:00", code="x", cls="IMP", etype="encounter.in-progress")
    res, _ = g.decide_entry(DISCHARGE, "Encounter/adm1", [readmit, visit(6, "2026-03-20T10:00:00-04:00")], now)
    assert res.outcome is Outcome.EXCLUDED and res.event_id == 5
    # still open: pending
    res, _ = g.decide_entry(DISCHARGE, "Encounter/adm1", [], datetime(2026, 3, 19, tzinfo=NY))
    assert res.outcome is Outcome.PENDING


def test_reminder_kept_is_settled_by_the_appointment_itself() -> None:
    kept = Goal.model_validate({"id": "reminder-kept", "on": ["appointment.fulfilled"], "same": "resource",
                                "window": {"from": 0, "to": 1}, "fails_on": ["appointment.noshow", "appointment.cancelled"]})
    g = CompiledGoal(kept, zone="America/New_York")
    appt = {"resourceType": "Appointment", "id": "a1", "status": "booked", "start": "2026-05-04T09:00:00-04:00"}
    other = LaterEvent(1, "appointment.fulfilled", "Appointment", "Appointment/a2",
                       {**appt, "id": "a2", "status": "fulfilled"}, datetime(2026, 5, 4, 10, tzinfo=NY))
    mine = LaterEvent(2, "appointment.fulfilled", "Appointment", "Appointment/a1",
                      {**appt, "status": "fulfilled"}, datetime(2026, 5, 4, 10, tzinfo=NY))
    noshow = LaterEvent(3, "appointment.noshow", "Appointment", "Appointment/a1",
                        {**appt, "status": "noshow"}, datetime(2026, 5, 4, 11, tzinfo=NY))
    during = datetime(2026, 5, 4, 12, tzinfo=NY)
    assert g.decide_entry(appt, "Appointment/a1", [other], during)[0].outcome is Outcome.PENDING
    assert g.decide_entry(appt, "Appointment/a1", [other, mine], during)[0].outcome is Outcome.ACHIEVED
    r = g.decide_entry(appt, "Appointment/a1", [noshow], during)[0]
    assert r.outcome is Outcome.MISSED and r.event_id == 3


def test_goal_spec_errors_say_what_is_expected() -> None:
    with pytest.raises(ValidationError, match="before 'from'"):
        Goal.model_validate({"id": "x", "on": ["encounter.finished"], "window": {"from": 7, "to": 1}})
    with pytest.raises(ValidationError):
        Goal.model_validate({"id": "x", "on": [], "window": {"to": 1}})


def test_recorded_goals_count_only_changes_after_the_entry_started() -> None:
    """No-show rebooked (counted_at: recorded, anchor: the missed visit's start): the booking
    of the missed visit itself, made that morning, is not its rebooking; one made after the
    no-show is."""
    rebook = Goal.model_validate({"id": "rebooked", "on": ["appointment.booked"], "counted_at": "recorded",
                                  "anchor": "start", "window": {"from": 0, "to": 14}})
    g = CompiledGoal(rebook, zone="America/New_York")
    missed = {"resourceType": "Appointment", "id": "m1", "status": "noshow", "start": "2026-05-04T15:00:00-04:00"}
    own_booking = LaterEvent(1, "appointment.booked", "Appointment", "Appointment/m1", dict(missed, status="booked"),
                             datetime(2026, 5, 4, 8, tzinfo=NY))
    noshow_at = datetime(2026, 5, 4, 16, tzinfo=NY)
    later = datetime(2026, 6, 1, tzinfo=NY)
    r, _ = g.decide_entry(missed, "Appointment/m1", [own_booking], later, origin_recorded=noshow_at)
    assert r.outcome is Outcome.MISSED
    rebooked = LaterEvent(2, "appointment.booked", "Appointment", "Appointment/m2", dict(missed, id="m2", status="booked"),
                          datetime(2026, 5, 6, 9, tzinfo=NY))
    r, _ = g.decide_entry(missed, "Appointment/m1", [own_booking, rebooked], later, origin_recorded=noshow_at)
    assert r.outcome is Outcome.ACHIEVED and r.event_id == 2
