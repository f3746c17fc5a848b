"""Send times: time of day in a zone, business days with the computed U.S. federal calendar,
"already past today", daylight saving both ways, the patient's zone."""
from __future__ import annotations

from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

import pytest

from middleware.rules.sendtime import (
    SendTime, local_at, normalize_time_of_day, parse_time_of_day, patient_zone, place, us_federal_holidays,
)

NY = "America/New_York"
TZ = ZoneInfo(NY)


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(timezone.utc)


def test_time_of_day_forms():
    assert parse_time_of_day("10:00") == time(10, 0)
    assert parse_time_of_day("9:05") == time(9, 5)
    assert normalize_time_of_day(600) == "10:00"  # YAML 1.1 reads an unquoted 10:00 as 600
    for bad in ("T9:00", "25:00", "9am", "10:60", "10", "10:00:00", ""):
        with pytest.raises(ValueError, match='at_time: "10:00"'):
            parse_time_of_day(bad)


def test_us_federal_holidays_by_rule_with_observed_days():
    h2024 = us_federal_holidays(2024)
    assert h2024[date(2024, 11, 28)] == "Thanksgiving Day"
    assert h2024[date(2024, 1, 15)].startswith("Birthday of Martin Luther King")
    assert h2024[date(2024, 5, 27)] == "Memorial Day"
    assert h2024[date(2024, 6, 19)].startswith("Juneteenth")
    assert len(h2024) == 11
    # 2026-07-04 is a Saturday: observed Friday the 3rd
    assert us_federal_holidays(2026)[date(2026, 7, 3)] == "Independence Day (observed)"
    # 2022-01-01 was a Saturday: observed Friday 2021-12-31 (in 2021's list)
    assert date(2021, 12, 31) in us_federal_holidays(2021) and date(2021, 12, 31) not in us_federal_holidays(2022)
    assert date(2020, 6, 19) not in us_federal_holidays(2020)  # Juneteenth from 2021


def test_agrees_with_the_holidays_package_for_us():
    import holidays

    for year in (2023, 2024, 2025, 2026, 2027):
        # the package also lists the weekend day of an observed holiday: not a business day anyway
        pkg = {d for d in holidays.country_holidays("US", years=year) if d.weekday() < 5}
        assert set(us_federal_holidays(year)) == pkg, year


def test_time_of_day_on_the_base_date_in_the_zone():
    base = datetime(2024, 6, 12, 15, 40, tzinfo=TZ)  # discharge + 2d, at 15:40
    p = place(base, SendTime(time(10, 0)), zone=NY, now=datetime(2024, 6, 10, 16, 0, tzinfo=TZ))
    assert p.due == datetime(2024, 6, 12, 10, 0, tzinfo=TZ) and p.skipped is None
    # same instant, a patient in Los Angeles: 12:40 local that day, sent at 10:00 Pacific
    la = place(base, SendTime(time(10, 0)), zone="America/Los_Angeles", now=datetime(2024, 6, 10, 16, 0, tzinfo=TZ))
    assert _utc(la.due) == datetime(2024, 6, 12, 17, 0, tzinfo=timezone.utc)


def test_weekend_and_holiday_move_to_next_or_previous_business_day():
    sat = datetime(2024, 11, 30, 8, 0, tzinfo=TZ)
    now = datetime(2024, 11, 1, tzinfo=TZ)
    assert place(sat, SendTime(time(9, 0), "next"), zone=NY, now=now).due == datetime(2024, 12, 2, 9, 0, tzinfo=TZ)
    assert place(sat, SendTime(time(9, 0), "previous"), zone=NY, now=now).due == datetime(2024, 11, 29, 9, 0, tzinfo=TZ)
    assert place(sat, SendTime(time(9, 0), "none"), zone=NY, now=now).due == datetime(2024, 11, 30, 9, 0, tzinfo=TZ)
    thanksgiving = datetime(2024, 11, 28, 12, 0, tzinfo=TZ)
    p = place(thanksgiving, SendTime(time(9, 0), "next"), zone=NY, now=now)
    assert p.due == datetime(2024, 11, 29, 9, 0, tzinfo=TZ)
    assert any("Thanksgiving Day" in s for s in p.steps)
    # an extra closure date from settings.holidays, and no calendar at all
    extra = frozenset({date(2024, 11, 29)})
    assert place(thanksgiving, SendTime(time(9, 0), "next"), zone=NY, now=now, extra_holidays=extra).due == \
        datetime(2024, 12, 2, 9, 0, tzinfo=TZ)
    assert place(thanksgiving, SendTime(time(9, 0), "next"), zone=NY, now=now, country=None).due == \
        datetime(2024, 11, 28, 9, 0, tzinfo=TZ)


def test_business_days_alone_keep_the_local_time():
    sun = datetime(2024, 6, 9, 14, 30, tzinfo=TZ)
    p = place(sun, SendTime(None, "next"), zone=NY, now=datetime(2024, 6, 1, tzinfo=TZ))
    assert p.due == datetime(2024, 6, 10, 14, 30, tzinfo=TZ)


@pytest.mark.parametrize("how,expected", [
    ("next_day", datetime(2024, 6, 11, 10, 0, tzinfo=TZ)),
    ("now", datetime(2024, 6, 10, 14, 0, tzinfo=TZ)),
])
def test_already_past_today(how, expected):
    now = datetime(2024, 6, 10, 14, 0, tzinfo=TZ)
    p = place(now, SendTime(time(10, 0), "none", how), zone=NY, now=now)
    assert p.due == expected and p.skipped is None


def test_already_past_today_skip_and_next_business_day():
    fri = datetime(2024, 6, 14, 14, 0, tzinfo=TZ)
    skipped = place(fri, SendTime(time(10, 0), "none", "skip"), zone=NY, now=fri)
    assert skipped.skipped and "already passed today" in skipped.skipped
    # past on a Friday with business_days: next -> Monday, not Saturday
    assert place(fri, SendTime(time(10, 0), "next"), zone=NY, now=fri).due == datetime(2024, 6, 17, 10, 0, tzinfo=TZ)
    # later today: not passed
    assert place(fri, SendTime(time(16, 0)), zone=NY, now=fri).due == datetime(2024, 6, 14, 16, 0, tzinfo=TZ)
    # passed a minute ago: still within the grace, fires (at the planned time)
    just = datetime(2024, 6, 14, 10, 1, tzinfo=TZ)
    assert place(just, SendTime(time(10, 0)), zone=NY, now=just).due == datetime(2024, 6, 14, 10, 0, tzinfo=TZ)


def test_a_date_before_today_is_left_to_skip_if_past():
    now = datetime(2024, 6, 14, 14, 0, tzinfo=TZ)
    p = place(datetime(2024, 6, 12, 9, 0, tzinfo=TZ), SendTime(time(10, 0)), zone=NY, now=now)
    assert p.due == datetime(2024, 6, 12, 10, 0, tzinfo=TZ) and p.skipped is None


def test_after_a_wait_the_first_send_time_at_or_after_the_timeout():
    timeout = datetime(2024, 6, 17, 15, 0, tzinfo=TZ)
    p = place(timeout, SendTime(time(10, 0)), zone=NY, now=datetime(2024, 6, 10, tzinfo=TZ), not_before=timeout)
    assert p.due == datetime(2024, 6, 18, 10, 0, tzinfo=TZ)
    early = datetime(2024, 6, 17, 8, 0, tzinfo=TZ)
    p = place(early, SendTime(time(10, 0)), zone=NY, now=datetime(2024, 6, 10, tzinfo=TZ), not_before=early)
    assert p.due == datetime(2024, 6, 17, 10, 0, tzinfo=TZ)


def test_spring_forward_nonexistent_time_moves_forward():
    # 2024-03-10 02:00 EST -> 03:00 EDT in New York: 02:30 does not exist
    p = place(datetime(2024, 3, 10, 0, 5, tzinfo=TZ), SendTime(time(2, 30)), zone=NY,
              now=datetime(2024, 3, 1, tzinfo=TZ))
    assert _utc(p.due) == datetime(2024, 3, 10, 7, 30, tzinfo=timezone.utc)  # 03:30 EDT
    assert p.due.astimezone(TZ).hour == 3 and p.due.astimezone(TZ).minute == 30
    assert any("does not exist" in s for s in p.steps)


def test_fall_back_ambiguous_time_takes_the_first_occurrence():
    # 2024-11-03 02:00 EDT -> 01:00 EST: 01:30 happens twice; the first is EDT (-04:00)
    p = place(datetime(2024, 11, 3, 0, 5, tzinfo=TZ), SendTime(time(1, 30)), zone=NY,
              now=datetime(2024, 11, 1, tzinfo=TZ))
    assert _utc(p.due) == datetime(2024, 11, 3, 5, 30, tzinfo=timezone.utc)
    assert local_at(date(2024, 11, 3), time(1, 30), TZ).utcoffset().total_seconds() == -4 * 3600


def test_ten_oclock_stays_ten_oclock_across_dst():
    before = place(datetime(2024, 3, 9, 12, tzinfo=TZ), SendTime(time(10, 0)), zone=NY, now=datetime(2024, 3, 1, tzinfo=TZ))
    after = place(datetime(2024, 3, 11, 12, tzinfo=TZ), SendTime(time(10, 0)), zone=NY, now=datetime(2024, 3, 1, tzinfo=TZ))
    assert _utc(before.due).hour == 15 and _utc(after.due).hour == 14


def test_patient_zone_from_extension_then_address_state():
    assert patient_zone(None) is None
    ext = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/Chicago"}],
           "address": [{"use": "home", "state": "CA"}]}
    assert patient_zone(ext) == ("America/Chicago", "the Patient's timezone extension")
    bad_ext = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "Mars/Base"}]}
    assert patient_zone(bad_ext) is None
    addr = {"address": [{"use": "old", "state": "NY"}, {"use": "work", "state": "TX", "country": "USA"},
                        {"use": "home", "state": "ca"}]}
    assert patient_zone(addr) == ("America/Los_Angeles", "the patient's address state (CA)")
    assert patient_zone(addr, from_address=False) is None
    assert patient_zone({"address": [{"state": "ON", "country": "CA"}]}) is None  # Ontario, Canada
    assert patient_zone({"address": [{"state": "AZ", "period": {"end": "2020-01-01"}}]}) is None
