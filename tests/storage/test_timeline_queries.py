"""The timeline's named queries (``storage/queries/timeline.py``) are index look-ups on both backends:
each per-patient read is a search on an index (no full scan of event, trigger, outcome, delivery or
inbound_message, no sort of a whole table), and the recent-patients list walks the event primary key
in order (no sort, no COUNT)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from middleware.storage.db import init_db, make_engine
from middleware.storage.queries import timeline as q
from middleware.storage.sql import REGISTRY, Query

PID = "pt_" + "a" * 26
PARAMS: dict[str, dict[str, Any]] = {
    "timeline.identity": {"pid": PID}, "timeline.merged_into": {"pid": PID}, "timeline.keys": {"pid": PID},
    "timeline.events": {"pid": PID, "before": q.NO_CURSOR, "limit": 101},
    "timeline.triggers": {"pid": PID, "before": q.NO_CURSOR, "limit": 101},
    "timeline.messages": {"ids": [1, 2]}, "timeline.deliveries": {"ids": [1, 2]},
    "timeline.outcomes": {"keys": ["s|1", "s|2"], "before": q.NO_CURSOR, "limit": 101},
    "timeline.patient_resources": {"keys": ["s|1"]}, "timeline.ids_of_keys": {"keys": ["s|1"]},
}
TABLES = ("event", "trigger", "outcome", "delivery", "inbound_message", "patient_identity", "patient_identifier", "patient")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    init_db(e)
    yield e
    e.dispose()


def plan(engine: Engine, query: Query, params: dict[str, Any]) -> str:
    c = query.compiled_for(engine.dialect.name)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "postgresql":
            # empty tables: ask whether an index path serves (in order), not what is cheapest on no rows
            cur.execute("SET enable_seqscan = off")
            cur.execute("SET enable_bitmapscan = off")
            cur.execute("EXPLAIN " + c.sql, c.params(params))
        else:
            cur.execute("EXPLAIN QUERY PLAN " + c.sql, c.params(params))
        return "\n".join(" ".join(str(x) for x in row) for row in cur.fetchall())
    finally:
        raw.close()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_per_patient_reads_search_an_index(engine: Engine, name: str) -> None:
    text = plan(engine, REGISTRY[name], PARAMS[name])
    if engine.dialect.name == "sqlite":
        scans = [ln for ln in text.splitlines() if " SCAN " in f" {ln} " and "json_each" not in ln]
        assert not scans and "SEARCH" in text, text
        if name in ("timeline.events", "timeline.triggers"):  # the (patient_id, id) index gives the order
            assert "TEMP B-TREE" not in text, text
    else:
        assert not any(f"Seq Scan on {t} " in text or f'Seq Scan on "{t}"' in text for t in TABLES), text
        assert "Index" in text, text
        if name in ("timeline.events", "timeline.triggers"):
            assert "Sort" not in text, text


def test_recent_patients_walk_the_event_key_without_sorting(engine: Engine) -> None:
    text = plan(engine, q.RECENT, {"before": q.NO_CURSOR, "limit": 400})
    if engine.dialect.name == "sqlite":
        assert "TEMP B-TREE" not in text, text
    else:
        assert "Sort" not in text and "Index" in text, text
