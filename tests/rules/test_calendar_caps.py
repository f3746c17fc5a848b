"""Calendar caps (``per: calendar``): the calendar day and week in the patient's zone, beside
rolling 24 h / 7 day windows; real SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timezone

import orjson
import pytest

from middleware.rules.spec import Caps
from middleware.scheduler.runner import Scheduler, calendar_bounds
from middleware.storage.tables import PatientRow

from .test_scheduler_batch import bundled, engine, store, trig, verdicts, with_caps  # noqa: F401 (fixtures)

# Wednesday 2024-06-05 16:00 UTC = 12:00 in New York, 09:00 in Los Angeles
NOW = datetime(2024, 6, 5, 16, tzinfo=timezone.utc)
T = NOW.timestamp()
#: 2024-06-05 05:00 UTC: 01:00 today in New York, 22:00 *yesterday* in Los Angeles
EARLY = datetime(2024, 6, 5, 5, tzinfo=timezone.utc).timestamp()
#: Sunday 2024-06-02 15:00 UTC: last week for a Monday week, this week for a Sunday week
SUNDAY = datetime(2024, 6, 2, 15, tzinfo=timezone.utc).timestamp()


def patient(key: str, state: str | None) -> PatientRow:
    res: dict = {"resourceType": "Patient"}
    if state:
        res["address"] = [{"use": "home", "state": state, "country": "US"}]
    return PatientRow(key=key, fhir_id=key, resource=orjson.dumps(res).decode())


def due(i: int, pk: str):  # noqa: ANN201
    return trig(i, pk, due=T - 600)


def fired(i: int, pk: str, at: float):  # noqa: ANN201
    return trig(i, pk, status="fired", fired_at=at)


def test_calendar_day_is_the_patients_local_day(engine, bundled):  # noqa: F811
    store(engine, patient("ny", "NY"), patient("la", "CA"),
          fired(101, "ny", EARLY), fired(102, "la", EARLY), due(1, "ny"), due(2, "la"))
    rs = with_caps(bundled, caps=Caps(per_day=1, per="calendar"))
    Scheduler(engine, lambda: rs, clock=lambda: NOW).fire_due()
    v = verdicts(engine)
    assert v["t|1"] == ("suppressed", "cap reached: 1 'rebooking-outreach' messages to this patient today (limit 1)")
    assert v["t|2"] == ("fired", None)  # 22:00 yesterday in Los Angeles


def test_rolling_window_counts_both(engine, bundled):  # noqa: F811
    store(engine, patient("ny", "NY"), patient("la", "CA"),
          fired(101, "ny", EARLY), fired(102, "la", EARLY), due(1, "ny"), due(2, "la"))
    rs = with_caps(bundled, caps=Caps(per_day=1, per="rolling"))
    Scheduler(engine, lambda: rs, clock=lambda: NOW).fire_due()
    v = verdicts(engine)
    assert v["t|1"][0] == v["t|2"][0] == "suppressed"
    assert "in the last 24 hours" in (v["t|2"][1] or "")


@pytest.mark.parametrize("week_starts, status", [("monday", "fired"), ("sunday", "suppressed")])
def test_calendar_week_starts_on_the_configured_day(engine, bundled, week_starts, status):  # noqa: F811
    # no Patient stored: the site's zone (America/New_York)
    store(engine, fired(101, "p", SUNDAY), due(1, "p"))
    rs = with_caps(bundled, caps=Caps(per_week=1, per="calendar", week_starts=week_starts))
    Scheduler(engine, lambda: rs, clock=lambda: NOW).fire_due()
    v = verdicts(engine)
    assert v["t|1"][0] == status
    if status == "suppressed":
        assert v["t|1"][1] == "cap reached: 1 'rebooking-outreach' messages to this patient this week (limit 1)"


def test_calendar_caps_count_the_batch_too(engine, bundled):  # noqa: F811
    store(engine, due(1, "p"), due(2, "p"), due(3, "p"))
    rs = with_caps(bundled, caps=Caps(per_day=2, per="calendar"))
    Scheduler(engine, lambda: rs, clock=lambda: NOW).fire_due()
    assert [verdicts(engine)[f"t|{i}"][0] for i in (1, 2, 3)] == ["fired", "fired", "suppressed"]


def test_calendar_bounds_per_zone(engine, bundled):  # noqa: F811
    store(engine, patient("la", "CA"))
    from middleware.storage.sql import unit

    with unit(engine) as u:
        b = calendar_bounds(u, ["la", "site"], bundled, NOW)
    assert b["la"][0] == datetime(2024, 6, 5, 7, tzinfo=timezone.utc).timestamp()  # midnight PDT
    assert b["site"][0] == datetime(2024, 6, 5, 4, tzinfo=timezone.utc).timestamp()  # midnight EDT
    assert b["site"][1] == datetime(2024, 6, 3, 4, tzinfo=timezone.utc).timestamp()  # Monday
