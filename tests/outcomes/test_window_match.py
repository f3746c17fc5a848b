"""Goal windows in local calendar dates, business days and elapsed hours; outcome decisions."""
from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from middleware.outcomes.match import Candidate, Outcome, decide
from middleware.outcomes.window import Unit, WindowSpec, add_business_days, window

NY = ZoneInfo("America/New_York")
FUH7 = WindowSpec(1, 7)
JULY4_OBSERVED = frozenset({date(2026, 7, 3)})


def open_day(d: date) -> bool:
    return d.weekday() < 5 and d not in JULY4_OBSERVED


def ny(*a: int) -> datetime:
    return datetime(*a, tzinfo=NY)  # type: ignore[misc]


def test_fuh_counts_local_dates_not_hours() -> None:
    discharge = ny(2026, 3, 16, 9, 0)
    w = window(discharge, FUH7, NY)
    assert not w.contains(ny(2026, 3, 16, 15, 0))  # on the discharge date: never counts
    assert w.contains(ny(2026, 3, 17, 0, 0))  # day 1 from its first minute
    assert w.contains(ny(2026, 3, 23, 16, 0))  # later on day 7: counts (plusDays(7) would drop it)
    assert not w.contains(ny(2026, 3, 24, 0, 0))  # day 8
    # the same instant seen from UTC is still judged on the patient's local date
    assert w.contains(datetime(2026, 3, 24, 3, 59, tzinfo=ZoneInfo("UTC")))  # 23:59 EDT on day 7


def test_window_across_spring_forward_keeps_whole_local_days() -> None:
    w = window(ny(2026, 3, 7, 22, 0), FUH7, NY)  # DST starts 2026-03-08 02:00 in New York
    assert w.opens == ny(2026, 3, 8, 0, 0)
    assert w.closes == ny(2026, 3, 15, 0, 0)
    assert w.closes - w.opens == timedelta(days=7, hours=-1)  # a 23-hour day inside


def test_window_across_fall_back() -> None:
    w = window(ny(2026, 10, 31, 12, 0), WindowSpec(1, 1), NY)  # DST ends 2026-11-01
    assert w.closes - w.opens == timedelta(hours=25)


def test_tcm_contact_counts_business_days_after_discharge() -> None:
    # Thursday 2 July 2026; Friday 3 July is the observed Independence Day holiday
    assert add_business_days(date(2026, 7, 2), 2, open_day) == date(2026, 7, 7)
    w = window(ny(2026, 7, 2, 11, 0), WindowSpec(1, 2, Unit.BUSINESS_DAYS), NY, open_day)
    assert w.opens == ny(2026, 7, 6, 0, 0)
    assert w.closes == ny(2026, 7, 8, 0, 0)
    assert w.contains(ny(2026, 7, 7, 17, 0))
    assert not w.contains(ny(2026, 7, 2, 15, 0))


def test_hours_window_is_elapsed_time() -> None:
    w = window(ny(2026, 3, 7, 22, 0), WindowSpec(0, 48, Unit.HOURS), NY)
    assert w.closes - w.opens == timedelta(hours=48)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        WindowSpec(7, 1)
    with pytest.raises(ValueError):
        window(datetime(2026, 1, 1), FUH7, NY)


def test_outcomes_achieved_missed_excluded_pending() -> None:
    anchor = ny(2026, 3, 16, 9, 0)
    w = window(anchor, FUH7, NY)
    visit = Candidate(11, ny(2026, 3, 20, 10, 0), qualifies=True)
    same_day = Candidate(10, ny(2026, 3, 16, 14, 0), qualifies=True)
    readmit = Candidate(12, ny(2026, 3, 18, 8, 0), excludes=True)
    during = ny(2026, 3, 19)
    after = ny(2026, 3, 25)
    assert decide(anchor, w, [], during).outcome is Outcome.PENDING
    assert decide(anchor, w, [same_day], after).outcome is Outcome.MISSED
    got = decide(anchor, w, [same_day, visit], after)
    assert got.outcome is Outcome.ACHIEVED and got.event_id == 11
    assert got.elapsed == timedelta(days=4, hours=1)
    assert decide(anchor, w, [visit, readmit], after).outcome is Outcome.EXCLUDED
    # achieved before the exclusion: stays achieved
    early = Candidate(13, ny(2026, 3, 17, 9, 0), qualifies=True)
    assert decide(anchor, w, [readmit, early], after).outcome is Outcome.ACHIEVED


def test_decision_ignores_arrival_order() -> None:
    anchor = ny(2026, 3, 16, 9, 0)
    w = window(anchor, FUH7, NY)
    events = [Candidate(i, ny(2026, 3, 17 + i % 9, 10, 0), qualifies=i % 3 == 0, excludes=i == 7) for i in range(1, 12)]
    first = decide(anchor, w, events, ny(2026, 4, 1))
    assert all(decide(anchor, w, list(reversed(events)), ny(2026, 4, 1)) == first for _ in range(2))
    assert decide(anchor, w, events + events, ny(2026, 4, 1)) == first  # a doubled event changes nothing
