"""Goal windows anchored to a clinical time and counted the way a measure counts them
(pure: standard library only).

A measure such as FUH counts **local calendar dates**: "a follow-up visit within 7 days
after the discharge date, not on the discharge date" means any visit whose local date is
discharge date + 1 … discharge date + 7, whatever the hour, so a visit at 16:00 on day 7
counts even though it is more than 7×24 h after a morning discharge. TCM's interactive
contact counts **business days** after discharge. Some goals count elapsed time (``hours``).

A window is ``[opens, closes)`` in absolute time, computed in the patient's zone with
:mod:`zoneinfo`, so a daylight-saving change inside it neither loses nor gains a day.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo


class Unit(StrEnum):
    CALENDAR_DAYS = "calendar_days"
    BUSINESS_DAYS = "business_days"
    HOURS = "hours"


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Days ``start``..``end`` (inclusive) after the anchor's local date; day 0 is the
    anchor's own date (FUH: 1..7, so the discharge date itself does not count). For
    ``hours`` the bounds are elapsed hours after the anchor instant (``end`` exclusive)."""

    start: int
    end: int
    unit: Unit = Unit.CALENDAR_DAYS

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"a window's end ({self.end}) is before its start ({self.start})")
        if self.unit is Unit.BUSINESS_DAYS and self.start < 0:
            raise ValueError("a business-day window starts on or after the anchor's date")


@dataclass(frozen=True, slots=True)
class Window:
    """Bounds in UTC: Python subtracts and compares datetimes that share a tzinfo by wall
    clock, which would make a DST day 24 hours long."""

    opens: datetime
    closes: datetime  # exclusive

    def contains(self, t: datetime) -> bool:
        return self.opens <= t < self.closes


def _midnight(d: date, tz: ZoneInfo) -> datetime:
    # Midnight exists in every zone careloop supports; where a zone skips midnight (DST at
    # 00:00, e.g. America/Santiago) zoneinfo resolves it forward, which is the day's start.
    return datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC)


BusinessDay = Callable[[date], bool]


def weekdays(d: date) -> bool:
    """Monday to Friday (callers pass the site's holiday calendar instead, rules.timing.Calendar)."""
    return d.weekday() < 5


def add_business_days(d: date, n: int, is_business_day: BusinessDay = weekdays) -> date:
    """The ``n``-th business day after ``d`` (n = 0: ``d`` itself if a business day, else the next)."""
    cur = d
    if n == 0:
        while not is_business_day(cur):
            cur += timedelta(days=1)
        return cur
    count = 0
    while count < n:
        cur += timedelta(days=1)
        if is_business_day(cur):
            count += 1
    return cur


def window(anchor: datetime, spec: WindowSpec, tz: ZoneInfo, is_business_day: BusinessDay = weekdays) -> Window:
    """The absolute window of ``spec`` for a clinical ``anchor`` (an aware datetime)."""
    if anchor.tzinfo is None:
        raise ValueError("the anchor must carry its offset")
    if spec.unit is Unit.HOURS:
        at = anchor.astimezone(UTC)
        return Window(at + timedelta(hours=spec.start), at + timedelta(hours=spec.end))
    day0 = anchor.astimezone(tz).date()
    if spec.unit is Unit.CALENDAR_DAYS:
        first = day0 + timedelta(days=spec.start)
        last = day0 + timedelta(days=spec.end)
    else:
        first = add_business_days(day0, spec.start, is_business_day) if spec.start else day0
        last = add_business_days(day0, spec.end, is_business_day)
    return Window(_midnight(first, tz), _midnight(last + timedelta(days=1), tz))
