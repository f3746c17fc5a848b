"""Timing arithmetic: DST both directions, business days with holidays, quiet hours."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from middleware.rules.spec import QuietHours
from middleware.rules.timing import add_business_days, add_duration, apply_quiet_hours, make_calendar

NY = "America/New_York"
TZ = ZoneInfo(NY)
US = make_calendar("US", [])


def test_calendar_day_keeps_local_time_when_clocks_spring_forward():
    start = datetime(2024, 3, 10, 14, 0, tzinfo=TZ)  # Sunday; DST began at 02:00 that morning
    before = add_duration(start, "1d", US, NY, -1)
    assert before == datetime(2024, 3, 9, 14, 0, tzinfo=TZ)
    assert (start.timestamp() - before.timestamp()) == 23 * 3600  # a 23-hour day


def test_calendar_day_keeps_local_time_when_clocks_fall_back():
    start = datetime(2024, 11, 4, 9, 0, tzinfo=TZ)  # Monday after DST ended (Sunday 02:00)
    before = add_duration(start, "3d", US, NY, -1)
    assert before.astimezone(TZ).hour == 9 and before.astimezone(TZ).day == 1
    assert (start.timestamp() - before.timestamp()) == 3 * 86400 + 3600  # one 25-hour day inside


def test_hours_are_elapsed_time_across_dst():
    start = datetime(2024, 3, 10, 14, 0, tzinfo=TZ)
    assert start.timestamp() - add_duration(start, "24h", US, NY, -1).timestamp() == 24 * 3600
    assert add_duration(start, "24h", US, NY, -1).astimezone(TZ).hour == 13


def test_business_days_skip_weekend_and_federal_holiday():
    fri = datetime(2024, 11, 8, 14, 0, tzinfo=TZ)  # Monday 11-11 is Veterans Day
    assert add_business_days(fri, 1, US, NY) == datetime(2024, 11, 12, 14, 0, tzinfo=TZ)
    assert add_business_days(fri, 2, US, NY) == datetime(2024, 11, 13, 14, 0, tzinfo=TZ)


def test_extra_holidays_and_no_country_calendar():
    cal = make_calendar(None, ["2024-11-12"])
    fri = datetime(2024, 11, 8, 14, 0, tzinfo=TZ)
    assert add_duration(fri, "2bd", cal, NY) == datetime(2024, 11, 13, 14, 0, tzinfo=TZ)  # 11-11 counts, 11-12 does not


def test_quiet_hours_spanning_midnight():
    qh = QuietHours(start="21:00", end="08:00", zone="patient")
    late = datetime(2024, 6, 3, 23, 30, tzinfo=TZ)
    early = datetime(2024, 6, 4, 6, 0, tzinfo=TZ)
    day = datetime(2024, 6, 4, 12, 0, tzinfo=TZ)
    assert apply_quiet_hours(late, qh, NY) == datetime(2024, 6, 4, 8, 0, tzinfo=TZ)
    assert apply_quiet_hours(early, qh, NY) == datetime(2024, 6, 4, 8, 0, tzinfo=TZ)
    assert apply_quiet_hours(day, qh, NY) == day


def test_quiet_hours_in_the_patients_zone_not_utc():
    qh = QuietHours(start="21:00", end="08:00")
    due = datetime(2024, 6, 4, 3, 0, tzinfo=timezone.utc)  # 23:00 in New York, 20:00 in Los Angeles
    assert apply_quiet_hours(due, qh, NY).astimezone(TZ).hour == 8
    assert apply_quiet_hours(due, qh, "America/Los_Angeles") == due


def test_quiet_hours_end_on_the_night_clocks_spring_forward():
    qh = QuietHours(start="01:00", end="02:30")  # 02:30 does not exist on 2024-03-10
    moved = apply_quiet_hours(datetime(2024, 3, 10, 1, 15, tzinfo=TZ), qh, NY)
    assert moved.astimezone(TZ).hour == 3 and moved.astimezone(TZ).minute == 30
