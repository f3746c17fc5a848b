"""The replay's named queries on both backends: the optional ``since`` / ``until`` / ``source``
bounds (NULL-able parameters) select what ``careloop reprocess`` would touch, and the requeue
changes exactly the rows the count promised."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from middleware.pipeline.replay import count_events, count_inbound_to_requeue, requeue_inbound
from middleware.storage.db import init_db, make_engine
from middleware.storage.queries import replay as rq
from middleware.storage.sql import unit
from middleware.storage.tables import EventRow, InboundMessage


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    init_db(e)
    yield e
    e.dispose()


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def test_requeue_bounds_and_count(engine: Engine) -> None:
    rows = [("a", 100.0, "failed"), ("a", 200.0, "ignored"), ("b", 150.0, "failed"), ("a", 300.0, "processed"),
            ("a", 250.0, "failed")]
    with Session(engine) as s:
        s.add_all([InboundMessage(source=src, channel="mllp", received_at=t, raw=b"x", sha256="h", status=st, error="e")
                   for src, t, st in rows])
        s.commit()
    assert count_inbound_to_requeue(engine) == 4
    assert count_inbound_to_requeue(engine, source="a") == 3
    assert count_inbound_to_requeue(engine, since=_at(150.0)) == 3  # since is inclusive
    assert count_inbound_to_requeue(engine, until=_at(200.0)) == 2  # until is exclusive
    assert count_inbound_to_requeue(engine, since=_at(120.0), until=_at(260.0), source="a") == 2
    assert requeue_inbound(engine, since=_at(120.0), until=_at(260.0), source="a") == 2
    with Session(engine) as s:
        got = sorted((m.source, m.received_at, m.status, m.error) for m in s.query(InboundMessage))
    assert got == [("a", 100.0, "failed", "e"), ("a", 200.0, "received", None), ("a", 250.0, "received", None),
                   ("a", 300.0, "processed", "e"), ("b", 150.0, "failed", "e")]
    assert count_inbound_to_requeue(engine) == 2


def test_event_pages_skip_merges_and_honour_bounds(engine: Engine) -> None:
    evs = [("s1", "Appointment", "appointment.booked", 10.0), ("s1", "Patient", "patient.merged", 20.0),
           ("s2", "CarePlan", "careplan.active", 30.0), ("s1", "CarePlan", "careplan.active", 40.0),
           ("s1", "Appointment", "appointment.cancelled", 50.0)]
    with Session(engine) as s:
        s.add_all([EventRow(type=ty, resource_type=rt, resource_key=f"{rt}/{i}", resource="{}", source=src,
                            arrival="message", occurred_at=t, created_at=t) for i, (src, rt, ty, t) in enumerate(evs)])
        s.commit()
    assert count_events(engine) == 5 and count_events(engine, "s1") == 4
    with unit(engine) as u:
        every = rq.events_page(u, 0, 100, since=None, until=None, source=None)
        assert [e.occurred_at for e in every] == [10.0, 30.0, 40.0, 50.0]  # the merge is not replayed
        assert [e.occurred_at for e in rq.events_page(u, every[0].id, 2, since=None, until=None, source=None)] == [30.0, 40.0]
        assert [e.occurred_at for e in rq.events_page(u, 0, 100, since=30.0, until=50.0, source="s1")] == [40.0]
        assert [p.source for p in rq.careplan_page(u, 0, 100, since=None, until=None, source=None)] == ["s2", "s1"]
        assert [p.source for p in rq.careplan_page(u, 0, 100, since=None, until=35.0, source=None)] == ["s2"]
        assert rq.event(u, every[1].id) == every[1] and rq.event(u, 10_000) is None
