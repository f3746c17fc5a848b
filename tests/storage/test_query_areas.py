"""The named queries of ``storage/queries/`` on both backends: each area's functions return what
the data holds (rows written through the ORM, read back through the registry's statements)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from middleware.storage.db import init_db, make_engine
from middleware.storage.queries import metrics
from middleware.storage.tables import DeliveryRow, InboundMessage, KeyValue, TriggerRow


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    init_db(e)
    yield e
    e.dispose()


def _trigger(i: int, status: str, due_at: float) -> TriggerRow:
    return TriggerRow(rule_id="r", ruleset_version="v", name="n", purpose="treatment-reminder", destinations="d1",
                      patient_key=f"p{i}", origin_key=f"o{i}", due_at=due_at, status=status, payload="{}",
                      created_at=0.0, updated_at=0.0)


def test_metrics_figures_count_what_is_stored(engine: Engine) -> None:
    metrics.ping(engine)
    empty = metrics.database_figures(engine, now=1000.0)
    assert empty.backlog == metrics.Backlog(None, 0) and empty.triggers_pending == 0 and empty.deliveries == ()
    with Session(engine) as s:
        s.add_all([InboundMessage(source="s", channel="mllp", received_at=t, raw=b"x", sha256="h", status=st)
                   for t, st in ((50.0, "received"), (40.0, "processed"), (60.0, "received"))])
        s.add_all([_trigger(1, "pending", 900.0), _trigger(2, "pending", 2000.0), _trigger(3, "fired", 10.0)])
        s.add_all([DeliveryRow(trigger_id=1, destination=d, idempotency_key=f"k{i}", status=st, next_attempt_at=0.0,
                               created_at=0.0, updated_at=0.0)
                   for i, (d, st) in enumerate((("d1", "dead"), ("d1", "dead"), ("d2", "delivered")))])
        s.add_all([KeyValue(key="destination.paused.d2", value="{}"), KeyValue(key="destination.disabled.d3", value="{}"),
                   KeyValue(key="retention.from", value="{}")])
        s.commit()
    f = metrics.database_figures(engine, now=1000.0)
    assert f.backlog == metrics.Backlog(50.0, 2)
    assert (f.triggers_pending, f.triggers_due, f.oldest_due_at) == (2, 1, 900.0)
    assert sorted(f.deliveries) == [("d1", "dead", 2), ("d2", "delivered", 1)]
    assert f.paused_destinations == {"d2", "d3"}


def test_retention_blanks_finished_bodies_only(engine: Engine) -> None:
    from middleware.delivery.retention import purge
    from middleware.storage.tables import EventRow

    with Session(engine) as s:
        s.add_all([InboundMessage(source="s", channel="mllp", received_at=10.0, raw=b"x", ack=b"a", sha256="h",
                                  status=st) for st in ("received", "processed")])
        s.add(EventRow(type="t", resource_type="Patient", resource_key="k", resource='{"a":1}', source="s",
                       arrival="message", occurred_at=1.0, created_at=10.0))
        for i, st in enumerate(("fired", "fired", "pending")):
            t = _trigger(i, st, 0.0)
            t.payload, t.explain, t.updated_at = '{"p":1}', "why", 10.0
            s.add(t)
        s.commit()
        s.add(DeliveryRow(trigger_id=2, destination="d1", idempotency_key="k", status="sending", next_attempt_at=0.0,
                          created_at=0.0, updated_at=0.0))  # trigger 2 still has a delivery in flight
        s.commit()
    rep = purge(engine, now=10.0 + 2 * 86400, days=1)
    assert (rep.inbound, rep.events, rep.triggers) == (1, 1, 1)
    with Session(engine) as s:
        assert sorted((m.status, m.raw, m.ack) for m in s.query(InboundMessage)) == [
            ("processed", None, None), ("received", b"x", b"a")]
        assert sorted((t.id, t.payload, t.explain) for t in s.query(TriggerRow)) == [
            (1, "{}", None), (2, '{"p":1}', "why"), (3, '{"p":1}', "why")]
        assert [e.resource for e in s.query(EventRow)] == ["{}"]
        assert s.get(KeyValue, "retention.from") is not None
    assert purge(engine, now=10.0 + 2 * 86400, days=1).triggers == 0  # idempotent
