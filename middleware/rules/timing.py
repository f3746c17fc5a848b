"""Time arithmetic for rules (pure): durations, business days with holidays, quiet
hours in a local zone (correct across daylight-saving changes), FHIR dateTime parsing."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterable
from zoneinfo import ZoneInfo

from .sendtime import non_business_reason
from .spec import CALENDAR_UNITS, QuietHours, duration_unit, parse_duration


def parse_fhir_datetime(value: str | None, default_zone: str = "UTC") -> datetime | None:
    """FHIR dateTime/instant/date -> aware datetime (a date means local midnight)."""
    if not value:
        return None
    v = str(value).strip()
    try:
        if len(v) == 4:
            return datetime(int(v), 1, 1, tzinfo=ZoneInfo(default_zone))
        if len(v) == 7:
            return datetime(int(v[:4]), int(v[5:7]), 1, tzinfo=ZoneInfo(default_zone))
        if len(v) == 10:
            d = date.fromisoformat(v)
            return datetime(d.year, d.month, d.day, tzinfo=ZoneInfo(default_zone))
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(default_zone))
    return dt


@dataclass(frozen=True)
class Calendar:
    """Business days: Monday-Friday minus holidays (a country's public holidays plus extra dates)."""

    country: str | None = "US"
    extra: frozenset[date] = frozenset()

    def is_business_day(self, d: date) -> bool:
        return non_business_reason(d, self.country, self.extra) is None


def make_calendar(country: str | None, extra: Iterable[str]) -> Calendar:
    return Calendar(country or None, frozenset(date.fromisoformat(x) for x in extra))


def add_business_days(start: datetime, n: int, cal: Calendar, zone: str) -> datetime:
    """Move ``n`` business days forward (or back) keeping the local wall-clock time."""
    local = start.astimezone(ZoneInfo(zone))
    d = local.date()
    step = 1 if n >= 0 else -1
    left = abs(n)
    while left:
        d += timedelta(days=step)
        if cal.is_business_day(d):
            left -= 1
    moved = datetime.combine(d, local.time().replace(tzinfo=None), tzinfo=ZoneInfo(zone))
    return moved.astimezone(timezone.utc).astimezone(ZoneInfo(zone))  # normalise a nonexistent wall time


def add_duration(start: datetime, text: str, cal: Calendar, zone: str, sign: int = 1) -> datetime:
    """Add ``"4h"``/``"2d"``/``"2bd"`` (signed by ``sign``).

    ``s``/``m``/``h`` are elapsed time; ``d``/``w`` are calendar days in ``zone`` (the
    local wall-clock time is kept across a DST change, so ``-1d`` before a 14:00
    appointment is 14:00 the day before even when that day had 23 hours); ``bd`` are
    business days (Monday-Friday minus the calendar's holidays), same local time.
    """
    amount, business = parse_duration(text)
    if business:
        return add_business_days(start, int(sign * amount), cal, zone)
    if duration_unit(text) in CALENDAR_UNITS:
        tz = ZoneInfo(zone)
        local = start.astimezone(tz)
        naive = local.replace(tzinfo=None) + timedelta(seconds=sign * amount)
        # a nonexistent wall time (spring forward) is normalised through UTC
        return naive.replace(tzinfo=tz).astimezone(timezone.utc).astimezone(tz)
    # elapsed time is added in UTC: Python adds wall-clock time within one ZoneInfo
    return (start.astimezone(timezone.utc) + timedelta(seconds=sign * amount)).astimezone(start.tzinfo)


def _hm(s: str) -> time:
    h, m = s.split(":")
    return time(int(h), int(m))


def apply_quiet_hours(due: datetime, qh: QuietHours | None, zone: str) -> datetime:
    """If ``due`` falls inside the quiet window in ``zone``, move it to the window's end."""
    if qh is None:
        return due
    tz = ZoneInfo(zone)
    local = due.astimezone(tz)
    start, end = _hm(qh.start), _hm(qh.end)
    t = local.time().replace(tzinfo=None)
    if start == end:
        return due
    if start > end:  # window spans midnight, e.g. 21:00-08:00
        if t >= start:
            target_day = local.date() + timedelta(days=1)
        elif t < end:
            target_day = local.date()
        else:
            return due
    else:
        if not (start <= t < end):
            return due
        target_day = local.date()
    moved = datetime.combine(target_day, end, tzinfo=tz)
    # normalise a nonexistent wall time (spring forward) through UTC
    return moved.astimezone(timezone.utc).astimezone(tz)


def epoch(dt: datetime) -> float:
    return dt.timestamp()


def from_epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)
