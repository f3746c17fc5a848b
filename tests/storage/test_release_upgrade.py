"""A database of release 0.1.0 (schema and data made by running v0.1.0's code: tests/fixtures/release-0.1.0)
upgraded to head on SQLite and PostgreSQL: every row intact, the schema equal to a fresh ``create_all``
of the metadata, and the pipeline running on it afterwards."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.storage import schema
from middleware.storage.db import make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter
from middleware.storage.tables import EventRow, InboundMessage
from tests.support.hl7msgs import siu

from storage_helpers import TABLES, all_rows, load_release_postgres, release_sqlite, schema_of

#: issue 6's columns, absent from one of the SQLite fixtures; NULL on every old row after the upgrade
ADDED = {"disclosure": {"outcome", "body_bytes", "request_target", "attempt"}, "suppression": {"source"},
         "delivery": {"locked_by"}}


@pytest.fixture(params=[pytest.param("sqlite", marks=pytest.mark.sqlite_only),
                        pytest.param("sqlite-without-added-columns", marks=pytest.mark.sqlite_only),
                        pytest.param("postgres", marks=pytest.mark.postgres)])
def release_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return release_sqlite(tmp_path)
    if request.param == "sqlite-without-added-columns":
        return release_sqlite(tmp_path, "careloop-sqlite-no-added-columns.db")
    url: str = request.getfixturevalue("postgres_url")
    load_release_postgres(url)
    return url


def _fresh(url_dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> Engine:
    """A new database of the same dialect created by ``create_all`` of the metadata (the fast path)."""
    if url_dialect == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path}/fresh.db")
    else:
        engine = make_engine(request.getfixturevalue("other_postgres_url"))
    assert schema.upgrade(engine).created
    return engine


def _process_one(engine: Engine, mappings: Path) -> None:
    """Ingest one new SIU and process it: the pipeline works on the upgraded database."""
    rs, diags = load_ruleset(mappings)
    assert rs is not None, diags
    raw = siu("S12", control="AFTER-UPGRADE-1", mrn="MRN777001", appt="UP1")
    sha = hashlib.sha256(raw).hexdigest()
    InboxWriter(engine).write_batch([InboundRecord(source="default", channel="mllp", raw=raw, sha256=sha,
                                                   status="received")])
    Processor(engine, lambda: rs).drain()
    with Session(engine) as s:
        msg = s.exec(select(InboundMessage).where(InboundMessage.sha256 == sha)).one()
        assert msg.status == "processed", msg.error
        assert s.exec(select(EventRow).where(EventRow.inbound_id == msg.id)).all()


def test_release_database_upgrades_with_every_row_intact(release_url: str, tmp_path: Path, mappings_dir: Path,
                                                        request: pytest.FixtureRequest) -> None:
    engine = make_engine(release_url)
    before = all_rows(engine)
    assert all(before[t] for t in TABLES), {t: len(v) for t, v in before.items()}  # the fixture fills every table
    assert schema.state(engine).kind == "unversioned"
    with pytest.raises(schema.SchemaError, match="careloop db upgrade"):
        schema.ensure_current(engine)

    result = schema.upgrade(engine)
    assert (result.before, result.after) == (None, schema.head_revision())
    assert schema.state(engine).kind == "current"
    after = all_rows(engine)
    for t in TABLES:
        assert len(after[t]) == len(before[t]), t
        for old, new in zip(before[t], after[t]):
            assert {k: new[k] for k in old} == old, t
            for k in ADDED.get(t, set()) - set(old):
                assert new[k] is None, (t, k)

    fresh = _fresh(engine.dialect.name, tmp_path, request)
    with engine.connect() as a, fresh.connect() as b:
        assert schema_of(a) == schema_of(b)
    fresh.dispose()

    _process_one(engine, mappings_dir)
    assert len(all_rows(engine, ["inbound_message"])["inbound_message"]) == len(before["inbound_message"]) + 1
    engine.dispose()
