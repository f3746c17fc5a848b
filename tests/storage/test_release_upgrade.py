"""A database of release 0.1.0 (schema and data made by running v0.1.0's code: tests/fixtures/release-0.1.0)
upgraded to head on SQLite and PostgreSQL: every row intact, the schema equal to a fresh ``create_all``
of the metadata, and the pipeline running on it afterwards."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

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


@pytest.fixture(params=["sqlite", "sqlite-without-added-columns", "postgres"])
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


def _assert_patient_ids(rows: dict[str, list[dict[str, Any]]]) -> None:
    """Migration 0005 gave every existing event and trigger its patient's internal id: one id per
    patient key, the fixture's merged-away key (MRN000999 -> MRN000123) sharing its survivor's,
    distinct patients distinct ids, none of them showing the MRN."""
    ids = {r["patient_key"]: r["patient_id"] for r in rows["patient_identifier"]}
    for table in ("event", "trigger"):
        assert rows[table] and all(r["patient_key"] for r in rows[table]), table  # the fixture keys every row
        for r in rows[table]:
            assert r["patient_id"] == ids[r["patient_key"]], (table, r["id"])
    assert ids["urn:careloop:id:HOSPA|MRN000999"] == ids["urn:careloop:id:HOSPA|MRN000123"]
    survivors = {ids[k] for k in ("urn:careloop:id:HOSPA|MRN000123", "urn:careloop:id:HOSPA|MRN000456",
                                  "urn:careloop:id:HOSPA|MRN000789", "urn:careloop:id:HOSPB|MRN000456")}
    assert len(survivors) == 4
    issued = {r["id"]: r["merged_into"] for r in rows["patient_identity"]}
    assert set(ids.values()) == set(issued) and not any(issued.values())
    for pid in issued:
        assert re.fullmatch(r"pt_[a-z2-7]{26}", pid) and "mrn" not in pid


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
    after = all_rows(engine, TABLES + ["patient_identity", "patient_identifier"])
    for t in TABLES:
        assert len(after[t]) == len(before[t]), t
        for old, new in zip(before[t], after[t]):
            assert {k: new[k] for k in old} == old, t
            for k in ADDED.get(t, set()) - set(old):
                assert new[k] is None, (t, k)

    _assert_patient_ids(after)

    fresh = _fresh(engine.dialect.name, tmp_path, request)
    with engine.connect() as a, fresh.connect() as b:
        assert schema_of(a) == schema_of(b)
    fresh.dispose()

    _process_one(engine, mappings_dir)
    assert len(all_rows(engine, ["inbound_message"])["inbound_message"]) == len(before["inbound_message"]) + 1
    engine.dispose()
