"""Send times (pure): a time of day in the patient's zone, business days with a named
holiday calendar, "already past today", daylight saving, and the patient's zone itself.

``careloop`` decides a trigger's due time in two steps: ``rules.evaluate`` computes a
*base* moment (``when.at`` + ``offset``, the event + ``when.after``, the end of a
``wait_for``, or now), then :func:`place` turns it into the send time:

1. the base's **local date** in the send zone (the patient's, else the site's);
2. ``business_days``: a date that is a weekend or a holiday of the calendar moves to the
   ``next`` (or ``previous``) business day, or stays (``none``, the default);
3. ``at_time``: that date at that wall-clock time. A time that does not exist that day
   (02:30 on the spring-forward day) moves forward by the gap (03:30); an ambiguous one
   (01:30 on the fall-back day) is its first occurrence (daylight time), as
   ``zoneinfo`` reads ``fold=0``;
4. after a ``wait_for``, the send time is the first ``at_time`` *at or after* the wait
   times out (the next day's when that day's time came before the timeout);
5. "already past today": when the send date is today and the time has passed,
   ``if_time_passed`` says ``next_day`` (the default: the same time tomorrow, the next
   business day if ``business_days`` is set), ``now`` or ``skip``.

Quiet hours are applied after this (``timing.apply_quiet_hours``): a send time inside
them moves to their end, as for every other trigger.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: a trigger due less than this far in the past still fires now (clock skew, processing lag)
PAST_GRACE = timedelta(minutes=5)

BusinessDays = Literal["none", "next", "previous"]
IfTimePassed = Literal["next_day", "now", "skip"]

# -- time of day ---------------------------------------------------------------

TIME_EXAMPLE = 'at_time: "10:00" (24-hour HH:MM, quoted)'


def parse_time_of_day(text: Any) -> time:
    """``"10:00"`` -> 10:00. Raises ValueError with the right form for ``"T9:00"``, ``"25:00"``, ``"9am"``.

    An unquoted ``10:00`` reaches here as the integer 600 (YAML 1.1 reads it as base 60):
    it is read back as 10:00."""
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text:
        text = f"{text // 60:02d}:{text % 60:02d}"
    s = str(text).strip()
    parts = s.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts) and len(parts[0]) in (1, 2) and len(parts[1]) == 2:
        h, m = int(parts[0]), int(parts[1])
        if h < 24 and m < 60:
            return time(h, m)
    raise ValueError(f"'{s}' is not a time of day; write {TIME_EXAMPLE}")


def normalize_time_of_day(text: Any) -> str:
    """``"9:00"`` / 540 -> ``"09:00"``; raises ValueError like :func:`parse_time_of_day`."""
    return parse_time_of_day(text).strftime("%H:%M")


def local_at(d: date, t: time, tz: ZoneInfo) -> datetime:
    """``d`` at wall-clock ``t`` in ``tz``: a nonexistent time moves forward by the DST gap,
    an ambiguous one is its first occurrence (``fold=0``)."""
    aware = datetime.combine(d, t).replace(tzinfo=tz, fold=0)
    return aware.astimezone(timezone.utc).astimezone(tz)


# -- holiday calendars -----------------------------------------------------------

#: names accepted by ``settings.holiday_calendar`` for the computed US federal calendar
US_FEDERAL = frozenset({"US", "us-federal"})


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The ``n``-th ``weekday`` (0 = Monday) of the month; ``n = -1`` the last."""
    if n > 0:
        first = date(year, month, 1)
        return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = (date(year + (month == 12), month % 12 + 1, 1)) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def _observed(d: date) -> date:
    """5 U.S.C. 6103(b): a holiday on a Saturday is observed on Friday, on a Sunday on Monday."""
    if d.weekday() == 5:
        return d - timedelta(days=1)
    if d.weekday() == 6:
        return d + timedelta(days=1)
    return d


@lru_cache(maxsize=64)
def us_federal_holidays(year: int) -> dict[date, str]:
    """The U.S. federal holidays of ``year`` (5 U.S.C. 6103), computed by rule, with the
    observed day of fixed-date ones falling on a weekend. Juneteenth from 2021."""
    fixed = [(1, 1, "New Year's Day"), (7, 4, "Independence Day"), (11, 11, "Veterans Day"), (12, 25, "Christmas Day")]
    if year >= 2021:
        fixed.append((6, 19, "Juneteenth National Independence Day"))
    out: dict[date, str] = {}
    for month, day, name in fixed:
        out[_observed(date(year, month, day))] = name + ("" if date(year, month, day).weekday() < 5 else " (observed)")
    # New Year's Day of the next year observed on Dec 31 of this one
    if date(year + 1, 1, 1).weekday() == 5:
        out[date(year, 12, 31)] = "New Year's Day (observed)"
    out[_nth_weekday(year, 1, 0, 3)] = "Birthday of Martin Luther King, Jr."
    out[_nth_weekday(year, 2, 0, 3)] = "Washington's Birthday"
    out[_nth_weekday(year, 5, 0, -1)] = "Memorial Day"
    out[_nth_weekday(year, 9, 0, 1)] = "Labor Day"
    out[_nth_weekday(year, 10, 0, 2)] = "Columbus Day"
    out[_nth_weekday(year, 11, 3, 4)] = "Thanksgiving Day"
    # an observed Saturday holiday can land in the previous year (Jan 1 on a Saturday)
    return {d: n for d, n in out.items() if d.year == year}


def holiday_name(d: date, country: str | None, extra: frozenset[date]) -> str | None:
    """Why ``d`` is a holiday (its name, or "a holiday listed in settings"), or None."""
    if d in extra:
        return "a holiday listed in settings.holidays"
    if not country:
        return None
    if country in US_FEDERAL:
        return us_federal_holidays(d.year).get(d)
    return _package_holidays(country, d.year).get(d)


@lru_cache(maxsize=64)
def _package_holidays(country: str, year: int) -> dict[date, str]:
    import holidays

    try:
        return {d: str(n) for d, n in holidays.country_holidays(country, years=year).items()}
    except (KeyError, NotImplementedError):
        return {}


def known_calendar(name: str) -> bool:
    """Whether ``settings.holiday_calendar`` names a calendar careloop can compute."""
    if name in US_FEDERAL:
        return True
    import holidays

    try:
        holidays.country_holidays(name)
    except (KeyError, NotImplementedError):
        return False
    return True


def non_business_reason(d: date, country: str | None, extra: frozenset[date]) -> str | None:
    """Why ``d`` is not a business day (weekday name or holiday), or None when it is one."""
    if d.weekday() >= 5:
        return d.strftime("%A")
    return holiday_name(d, country, extra)


# -- the patient's zone ------------------------------------------------------------

#: FHIR extensions that carry a zone (valueCode, IANA name): the R5 core ``timezone`` (usable
#: in R4 as an extension), its older ``tz-code`` form and a local ``patient-timezone``
ZONE_EXTENSIONS = ("/StructureDefinition/timezone", "/StructureDefinition/tz-code", "patient-timezone")

#: U.S. state or territory (USPS code) -> the IANA zone of most of its residents
US_STATE_ZONES = {
    **dict.fromkeys(["CT", "DE", "DC", "FL", "GA", "KY", "ME", "MD", "MA", "NH", "NJ", "NY", "NC", "OH", "PA",
                     "RI", "SC", "VT", "VA", "WV"], "America/New_York"),
    "MI": "America/Detroit", "IN": "America/Indiana/Indianapolis",
    **dict.fromkeys(["AL", "AR", "IL", "IA", "KS", "LA", "MN", "MS", "MO", "NE", "ND", "OK", "SD", "TN", "TX", "WI"],
                    "America/Chicago"),
    **dict.fromkeys(["CO", "MT", "NM", "UT", "WY"], "America/Denver"),
    "ID": "America/Boise", "AZ": "America/Phoenix",
    **dict.fromkeys(["CA", "NV", "OR", "WA"], "America/Los_Angeles"),
    "AK": "America/Anchorage", "HI": "Pacific/Honolulu", "PR": "America/Puerto_Rico", "VI": "America/St_Thomas",
    "GU": "Pacific/Guam", "MP": "Pacific/Saipan", "AS": "Pacific/Pago_Pago",
}
_US = {"", "US", "USA", "UNITED STATES", "UNITED STATES OF AMERICA"}


def _valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def patient_zone(patient: dict[str, Any] | None, *, from_address: bool = True) -> tuple[str, str] | None:
    """The patient's zone and where it came from, or None when the data does not say.

    In order: a zone extension on the Patient (``.../StructureDefinition/timezone``,
    valueCode an IANA name); then, with ``from_address``, the state of the patient's
    current home address (else the first current one) when it is in the U.S., mapped to
    the zone of most of that state's residents (:data:`US_STATE_ZONES`)."""
    if not patient:
        return None
    for ext in patient.get("extension") or []:
        url, code = str(ext.get("url", "")), ext.get("valueCode")
        if code and url.endswith(ZONE_EXTENSIONS) and _valid_zone(str(code)):
            return str(code), "the Patient's timezone extension"
    if not from_address:
        return None
    addresses = [a for a in patient.get("address") or [] if isinstance(a, dict)
                 and a.get("use") not in ("old", "billing") and not ((a.get("period") or {}).get("end"))]
    addresses.sort(key=lambda a: a.get("use") != "home")
    for a in addresses:
        state = str(a.get("state") or "").strip().upper()
        if str(a.get("country") or "").strip().upper() in _US and state in US_STATE_ZONES:
            return US_STATE_ZONES[state], f"the patient's address state ({state})"
    return None


# -- placing a send time ---------------------------------------------------------------


@dataclass(frozen=True)
class SendTime:
    """The send-time part of ``when`` (see ``spec.When``)."""

    at_time: time | None = None
    business_days: BusinessDays = "none"
    if_time_passed: IfTimePassed = "next_day"

    @property
    def active(self) -> bool:
        return self.at_time is not None or self.business_days != "none"


@dataclass
class Placement:
    due: datetime
    steps: list[str] = field(default_factory=list)
    skipped: str | None = None  # why, when ``if_time_passed: skip`` dropped it


def _business_date(d: date, how: BusinessDays, country: str | None, extra: frozenset[date],
                   steps: list[str]) -> date:
    if how == "none":
        return d
    step = 1 if how == "next" else -1
    moved, why = d, non_business_reason(d, country, extra)
    first_why = why
    while why is not None:
        moved += timedelta(days=step)
        why = non_business_reason(moved, country, extra)
    if moved != d:
        steps.append(f"{d.isoformat()} is not a business day ({first_why}): {how} business day {moved.isoformat()}")
    return moved


def place(base: datetime, spec: SendTime, *, zone: str, now: datetime, country: str | None = "US",
          extra_holidays: frozenset[date] = frozenset(), not_before: datetime | None = None) -> Placement:
    """The send time for ``base`` (see the module docstring). ``not_before``: the end of a
    ``wait_for`` (the send time is at or after it)."""
    tz = ZoneInfo(zone)
    local = base.astimezone(tz)
    steps: list[str] = []
    t = spec.at_time or local.time().replace(tzinfo=None)

    def at(d: date) -> datetime:
        due = local_at(d, t, tz)
        if due.time().replace(tzinfo=None) != t:
            steps.append(f"{t.strftime('%H:%M')} does not exist on {d.isoformat()} in {zone} (clocks spring forward): "
                         f"moved forward to {due.strftime('%H:%M')}")
        return due

    d = _business_date(local.date(), spec.business_days, country, extra_holidays, steps)
    due = at(d)
    if spec.at_time is not None:
        steps.append(f"send time {t.strftime('%H:%M')} {zone} on {d.isoformat()} = {due.isoformat()}")
    if not_before is not None and due < not_before:
        d = _business_date(d + timedelta(days=1), "next" if spec.business_days != "none" else "none", country,
                           extra_holidays, steps)
        due = at(d)
        steps.append(f"the wait ends at {not_before.astimezone(tz).strftime('%H:%M')}, after that day's send time: "
                     f"next one {due.isoformat()}")
    today = now.astimezone(tz).date()
    if spec.at_time is not None and d == today and due < now - PAST_GRACE:
        if spec.if_time_passed == "next_day":
            d = _business_date(d + timedelta(days=1), "next" if spec.business_days != "none" else "none", country,
                               extra_holidays, steps)
            due = at(d)
            steps.append(f"{t.strftime('%H:%M')} has already passed today (if_time_passed: next_day): {due.isoformat()}")
        elif spec.if_time_passed == "now":
            steps.append(f"{t.strftime('%H:%M')} has already passed today (if_time_passed: now): fires now")
            due = now
        else:
            return Placement(due, steps, f"send time {due.isoformat()} has already passed today (if_time_passed: skip)")
    return Placement(due, steps)
