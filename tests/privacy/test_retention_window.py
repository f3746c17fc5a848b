"""Retention works in chunks over the window since the last run (on the backend under test)."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from middleware.delivery import retention
from middleware.storage.db import init_db, make_engine

DAY = 86400.0
NOW = 2_000_000_000.0


def _events(engine, ages_days: list[float]) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as c:
        for i, age in enumerate(ages_days):
            t = NOW - age * DAY
            c.execute(text("INSERT INTO event (type, resource_type, resource_key, resource, source, arrival, occurred_at, "
                           "created_at) VALUES ('appointment.booked', 'Appointment', :k, :body, 's', 'message', :t, :t)"),
                      {"k": f"Appointment/{i}", "t": t, "body": '{"x": 1}'})
            c.execute(text("INSERT INTO \"trigger\" (rule_id, ruleset_version, name, purpose, destinations, origin_key, due_at, "
                           "status, payload, created_at, updated_at) VALUES ('r', 'v', 'n', 'p', '', :o, :t, :s, :body, :t, :t)"),
                      {"o": f"r|{uuid.uuid4().hex}", "t": t, "s": "fired" if i % 2 else "pending", "body": '{"a": 1}'})


def _bodies(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with engine.connect() as c:
        ev = c.execute(text("SELECT count(*) FROM event WHERE resource <> '{}'")).scalar_one()
        tr = c.execute(text("SELECT count(*) FROM \"trigger\" WHERE payload <> '{}'")).scalar_one()
    return ev, tr


def test_chunks_and_windows(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = db_url
    monkeypatch.setattr(retention, "CHUNK", 3)  # many chunks from a few rows
    engine = make_engine(url)
    init_db(engine)
    _events(engine, [40.0 + i * 0.1 for i in range(10)] + [5.0, 1.0])  # 10 old rows, 2 recent ones
    rep = retention.purge(engine, now=NOW, days=30)
    assert rep.events == 10 and rep.triggers == 5  # the 5 old pending triggers keep their payload
    assert _bodies(engine) == (2, 7)
    # a row written later with an old time is before the window: only --full reaches it
    _events(engine, [45.0])
    assert retention.purge(engine, now=NOW + 3600, days=30).events == 0
    assert retention.purge(engine, now=NOW + 3600, days=30, full=True).events == 1
    # the recent rows are purged once their time passes the moving cut-off
    assert retention.purge(engine, now=NOW + 26 * DAY, days=30).events == 1
    engine.dispose()
