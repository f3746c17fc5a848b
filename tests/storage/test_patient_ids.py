"""careloop's stable internal patient id (``storage/patient_ids.py``), through the real pipeline on
SQLite and PostgreSQL: issued on a patient's first message, kept on the next ones, kept by the
survivor of an ADT^A40 merge (the merged-away key and id resolve to it), random rather than
derived from the MRN."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from middleware.pipeline.process import Processor
from middleware.rules.load import RuleSet, load_ruleset
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter
from middleware.storage.patient_ids import current_patient_id, new_patient_id, resolve_patient_id, stamp_unassigned_rows
from middleware.storage.sql import unit
from tests.support.hl7msgs import adt, siu

ID = re.compile(r"pt_[a-z2-7]{26}")
START = datetime.now(timezone.utc) + timedelta(days=5)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    init_db(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def rs(mappings_dir: Path) -> RuleSet:
    ruleset, diags = load_ruleset(mappings_dir)
    assert ruleset is not None, diags
    return ruleset


def ingest(engine: Engine, rs: RuleSet, *messages: bytes) -> None:
    InboxWriter(engine).write_batch([InboundRecord(source="default", channel="mllp", raw=m, status="received",
                                                   sha256=hashlib.sha256(m).hexdigest()) for m in messages])
    Processor(engine, lambda: rs).drain()
    with engine.connect() as c:
        bad = c.execute(text("SELECT status, error FROM inbound_message WHERE status <> 'processed'")).all()
    assert not bad, bad


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql), params)]


def key_of(engine: Engine, mrn: str) -> str:
    (key,), = rows(engine, "SELECT DISTINCT patient_key FROM event WHERE patient_key LIKE :m", m=f"%|{mrn}")
    return str(key)


def ids_of(engine: Engine, table: str, key: str) -> set[str]:
    return {r[0] for r in rows(engine, f'SELECT patient_id FROM "{table}" WHERE patient_key = :k', k=key)}


def by_message(engine: Engine, message: bytes, table: str) -> set[str]:
    """The patient ids on the events (or the triggers made from the events) of one inbound message."""
    sql = ("SELECT e.patient_id FROM event e JOIN inbound_message m ON m.id = e.inbound_id WHERE m.sha256 = :c"
           if table == "event" else
           'SELECT t.patient_id FROM "trigger" t JOIN event e ON e.id = t.event_id '
           "JOIN inbound_message m ON m.id = e.inbound_id WHERE m.sha256 = :c")
    found = {r[0] for r in rows(engine, sql, c=hashlib.sha256(message).hexdigest())}
    assert found, table
    return found


def identifier(engine: Engine, key: str) -> str | None:
    found = rows(engine, "SELECT patient_id FROM patient_identifier WHERE patient_key = :k", k=key)
    return str(found[0][0]) if found else None


def test_new_patient_gets_an_id_and_keeps_it(engine: Engine, rs: RuleSet) -> None:
    ingest(engine, rs, siu("S12", control="P1", mrn="MRN810001", appt="A1", start=START))
    key = key_of(engine, "MRN810001")
    (pid,) = ids_of(engine, "event", key)
    assert ID.fullmatch(pid)
    assert ids_of(engine, "trigger", key) == {pid}  # the reminders carry it too
    assert identifier(engine, key) == pid
    assert rows(engine, "SELECT merged_into FROM patient_identity WHERE id = :p", p=pid) == [(None,)]

    # the same patient's next message (another appointment) keeps the id; another patient gets another
    ingest(engine, rs, siu("S12", control="P2", mrn="MRN810001", appt="A2", start=START + timedelta(days=1)),
           siu("S12", control="P3", mrn="MRN810002", appt="A3", start=START))
    assert ids_of(engine, "event", key) == {pid} and ids_of(engine, "trigger", key) == {pid}
    assert len(rows(engine, "SELECT id FROM event WHERE patient_key = :k", k=key)) >= 2
    (other,) = ids_of(engine, "event", key_of(engine, "MRN810002"))
    assert ID.fullmatch(other) and other != pid
    assert rows(engine, "SELECT count(*) FROM patient_identity") == [(2,)]
    assert rows(engine, "SELECT count(*) FROM event WHERE patient_id IS NULL") == [(0,)]


def test_merge_keeps_the_survivors_id_and_maps_the_old_key(engine: Engine, rs: RuleSet) -> None:
    m2 = siu("S12", control="M2", mrn="MRN820002", appt="B2", start=START)
    ingest(engine, rs, siu("S12", control="M1", mrn="MRN820001", appt="B1", start=START), m2)
    survivor_key, retired_key = key_of(engine, "MRN820001"), key_of(engine, "MRN820002")
    (survivor,) = ids_of(engine, "event", survivor_key)
    (retired,) = ids_of(engine, "event", retired_key)
    assert survivor != retired

    ingest(engine, rs, adt("A40", control="M3", mrn="MRN820001", prior_mrn="MRN820002"))
    assert identifier(engine, survivor_key) == survivor  # the survivor keeps its id
    assert identifier(engine, retired_key) == survivor  # the merged-away key points to it
    # the merged-away id is kept, recorded as merged into the survivor's: old links resolve
    assert rows(engine, "SELECT merged_into FROM patient_identity WHERE id = :p", p=retired) == [(survivor,)]
    # every event and trigger of the patient now carries the surviving id (one look-up finds them all)
    # (merge_patients moved the retired patient's triggers to the surviving key; events keep the key they came with)
    assert ids_of(engine, "event", retired_key) == {survivor} and ids_of(engine, "trigger", survivor_key) == {survivor}
    assert by_message(engine, m2, "trigger") == {survivor}
    assert rows(engine, "SELECT count(*) FROM event WHERE patient_id = :p", p=retired) == [(0,)]
    assert rows(engine, "SELECT patient_id FROM event WHERE type = 'patient.merged'") == [(survivor,)]
    with unit(engine) as db:
        assert resolve_patient_id(db, retired_key) == survivor
        assert resolve_patient_id(db, survivor_key) == survivor
        assert current_patient_id(db, retired) == survivor
        assert resolve_patient_id(db, "urn:careloop:id:NOWHERE|MRN000000") is None

    # a late message under the retired MRN lands on the surviving patient and id
    m4 = siu("S12", control="M4", mrn="MRN820002", appt="B4", start=START + timedelta(days=2))
    ingest(engine, rs, m4)
    assert by_message(engine, m4, "event") == by_message(engine, m4, "trigger") == {survivor}

    # a merge naming a key careloop never saw maps it to the survivor without issuing an id
    ingest(engine, rs, adt("A40", control="M5", mrn="MRN820001", prior_mrn="MRN820009"))
    unseen = survivor_key.replace("MRN820001", "MRN820009")
    assert identifier(engine, unseen) == survivor
    assert rows(engine, "SELECT count(*) FROM patient_identity") == [(2,)]

    # a chain: the survivor is merged into a third patient; every key and id resolves to the last survivor
    ingest(engine, rs, siu("S12", control="M6", mrn="MRN820003", appt="B6", start=START))
    third_key = key_of(engine, "MRN820003")
    (third,) = ids_of(engine, "event", third_key)
    ingest(engine, rs, adt("A40", control="M7", mrn="MRN820003", prior_mrn="MRN820001"))
    for k in (survivor_key, retired_key, unseen, third_key):
        assert identifier(engine, k) == third, k
    assert dict(rows(engine, "SELECT id, merged_into FROM patient_identity")) == {
        survivor: third, retired: third, third: None}  # flattened: one hop from any old id
    assert rows(engine, 'SELECT DISTINCT patient_id FROM "trigger"') == [(third,)]


def test_the_id_is_random_not_derived_from_the_mrn(engine: Engine, rs: RuleSet, tmp_path: Path) -> None:
    """The same MRN in two databases gets two unrelated ids; nothing of the key is in the id."""
    msg = siu("S12", control="R1", mrn="MRN830001", appt="C1", start=START)
    ingest(engine, rs, msg)
    other = make_engine(f"sqlite:///{tmp_path}/other.db")
    init_db(other)
    ingest(other, rs, msg)
    key = key_of(engine, "MRN830001")
    assert key_of(other, "MRN830001") == key
    (a,), (b,) = ids_of(engine, "event", key), ids_of(other, "event", key)
    other.dispose()
    assert a != b
    for pid in (a, b):
        assert ID.fullmatch(pid) and "830001" not in pid and hashlib.sha256(key.encode()).hexdigest()[:8] not in pid
    assert len({new_patient_id() for _ in range(1000)}) == 1000


def test_rows_written_without_an_id_are_stamped_at_start(engine: Engine, rs: RuleSet) -> None:
    """What a replica of the previous release writes during a rolling upgrade (no ``patient_id``)
    gets its id when the service starts: a known key its patient's, a merged-away key its
    survivor's, a new key a new one."""
    ingest(engine, rs, siu("S12", control="U1", mrn="MRN840001", appt="D1", start=START),
           siu("S12", control="U2", mrn="MRN840002", appt="D2", start=START))
    known, retired = key_of(engine, "MRN840001"), key_of(engine, "MRN840002")
    ingest(engine, rs, adt("A40", control="U3", mrn="MRN840001", prior_mrn="MRN840002"))
    (pid,) = ids_of(engine, "event", known)
    new = known.replace("MRN840001", "MRN840003")
    with engine.begin() as c:  # as release 0.1.0's code writes them: no patient_id column named
        for i, key in enumerate((known, retired, new)):
            c.execute(text("INSERT INTO event (type, resource_type, resource_key, patient_key, resource, source, arrival, "
                           "occurred_at, created_at) VALUES ('appointment.booked', 'Appointment', :r, :k, '{}', 'old', "
                           "'message', 1.0, 1.0)"), {"r": f"Appointment/old-{i}", "k": key})
            c.execute(text('INSERT INTO "trigger" (rule_id, ruleset_version, name, purpose, destinations, patient_key, '
                           "origin_key, due_at, payload, created_at, updated_at) VALUES ('r', 'v', 'n', 'p', 'hook', :k, "
                           ":o, 1.0, '{}', 1.0, 1.0)"), {"k": key, "o": f"old|{i}"})
    assert stamp_unassigned_rows(engine) == 3
    got = dict(rows(engine, "SELECT patient_key, patient_id FROM event WHERE source = 'old'"))
    assert got[known] == got[retired] == pid
    assert ID.fullmatch(got[new]) and got[new] != pid and identifier(engine, new) == got[new]
    assert dict(rows(engine, "SELECT patient_key, patient_id FROM \"trigger\" WHERE origin_key LIKE 'old|%'")) == got
    assert rows(engine, "SELECT count(*) FROM event WHERE patient_id IS NULL") == [(0,)]
    assert stamp_unassigned_rows(engine) == 0  # nothing left: the next start finds nothing


def test_the_id_never_reaches_a_destination(db_url: str, tmp_path: Path) -> None:
    """The whole pipeline to a real webhook receiver, with a rule that asks for everything it can
    name (the patient, the resource): what the destination receives holds the contact key, never
    the internal id. (Every destination type and fixture: tests/privacy/test_corpus.py.)"""
    import asyncio
    import json

    from httpx import AsyncClient

    from middleware.delivery.sink import SinkServer
    from middleware.scheduler.runner import Scheduler
    from tests.support.delivery_pipeline import CONTACT_SECRET, SECRETS, WEBHOOK_SECRET, destination, write_mappings
    from middleware.delivery.worker import DeliveryWorker

    leaky = {"rules": [{"id": "leaky", "on": ["appointment.booked"], "purpose": "care-coordination", "on_no_longer_matching": "keep",
                        "emit": {"trigger": "leaky", "destinations": ["webhook"],
                                 "payload": {"patient": "%patient", "appointment": "%resource", "appointment_start": "start"}}}]}
    wide = {"mode": "fields", "allow": ["patient", "appointment", "appointment_start", "purpose"]}
    with SinkServer([WEBHOOK_SECRET]) as sink:
        mappings = write_mappings(tmp_path, [destination("webhook", "webhook", webhook_url=sink.url + "/hooks", policy=wide)],
                                  extra_rules=leaky)
        ruleset, diags = load_ruleset(mappings)
        assert ruleset is not None, diags
        engine = make_engine(db_url)
        init_db(engine)
        ingest(engine, ruleset, siu("S12", control="V1", mrn="MRN850001", appt="E1", start=START),
               siu("S12", control="V2", mrn="MRN850002", appt="E2", start=START))
        ids = {r[0] for r in rows(engine, "SELECT id FROM patient_identity")}
        sched = Scheduler(engine, lambda: ruleset)  # the leaky rule is due at once (signatures carry real time)
        while sched.fire_due():
            pass

        async def deliver() -> None:
            async with AsyncClient() as http:
                w = DeliveryWorker(engine, lambda: ruleset, contact_secret=CONTACT_SECRET, http=http, secrets=SECRETS)
                while await w.run_once():
                    pass
                await w.aclose()
        asyncio.run(deliver())
        received = sink.received()
        engine.dispose()
    assert len(ids) == 2 and received and all(r["verified"] for r in received)
    assert any(r["body"]["data"].get("patient") for r in received)  # the rule did reach the patient
    for r in received:
        text_sent = json.dumps(r["body"]) + r["webhook_id"]
        assert r["contact_key"] and not ID.search(text_sent), text_sent
        assert not any(pid in text_sent for pid in ids)
