"""Backfill from the stub: statuses known, events tagged backfill, no triggers, marks set;
and the subscription definitions are well-formed."""
from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import Session, select

import fhir_samples as S
from conftest import make_settings
from fhir_stub import FhirStub
from middleware.pipeline.backfill import backfill
from middleware.listeners.fhir_fetch import FhirFetcher
from middleware.rules.load import load_ruleset
from middleware.storage.db import init_db, make_engine
from middleware.storage.tables import EventRow, ResourceState, TriggerRow

REPO = Path(__file__).resolve().parents[2]


def test_backfill_fires_nothing_and_knows_every_status(tmp_path: Path, stub: FhirStub, db_url: str) -> None:
    stub.bulk_load([S.patient(f"p{i}", f"M{i}") for i in range(20)])
    stub.bulk_load([S.appointment(f"a{i}", pid=f"p{i % 20}") for i in range(300)]
                   + [S.encounter_r4(f"e{i}", pid=f"p{i % 20}") for i in range(100)]
                   + [S.careplan_r4(f"c{i}", pid=f"p{i % 20}") for i in range(100)])
    settings = make_settings(tmp_path, stub.base, db_url)
    rs, _ = load_ruleset(settings.mappings_dir)
    engine = make_engine(settings.database_url)
    init_db(engine)
    rep = backfill(engine, rs, rs.sources.get("hospital"), FhirFetcher(stub.base, allow_private_network=True), page=100)
    assert rep.resources == 500 and rep.per_type == {"Appointment": 300, "Encounter": 100, "CarePlan": 100}
    with Session(engine) as s:
        assert s.exec(select(TriggerRow)).all() == []
        evs = s.exec(select(EventRow)).all()
        assert {e.arrival for e in evs} == {"backfill"}
        states = s.exec(select(ResourceState)).all()
        assert len(states) == 500 and all(st.status for st in states)
        a = s.get(ResourceState, "Appointment/a7")
        assert a.patient_key == f"{S.MRN_SYSTEM}|M7"  # from the _include'd Patient, no extra reads
    assert not [p for p in stub.requests if p.startswith("/fhir/Patient/")]
    from middleware.pipeline.fhir_state import kv_get
    from middleware.storage.sql import unit

    with unit(engine) as u:
        assert kv_get(u, "fhir.hwm.hospital.Appointment")["at"]


def test_subscription_definitions() -> None:
    files = sorted((REPO / "subscriptions").glob("*.json"))
    assert len(files) == 6
    for f in files:
        sub = json.loads(f.read_text())
        assert sub["resourceType"] == "Subscription" and sub["criteria"].endswith("?")
        ch = sub["channel"]
        assert ch["type"] == "rest-hook" and any("${CARELOOP_FHIR_TOKEN}" in h for h in ch["header"])
        if "payloadless" in f.name:
            assert "payload" not in ch and ch["endpoint"].endswith(sub["criteria"][:-1])
        else:
            assert ch["payload"] == "application/fhir+json"
            assert ch["extension"][0]["url"].endswith("subscription-send-delete-messages")
