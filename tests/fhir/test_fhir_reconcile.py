"""Reconciliation against the loopback stub: dropped notifications, deletes found only in
_history, start-up sweeps after downtime, retries on 429 with Retry-After."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest

import fhir_samples as S
from conftest import TOKEN, App, make_settings
from fhir_stub import FhirStub
from middleware.config.sources import FhirAuth
from middleware.listeners.fhir_fetch import FetchError, FhirFetcher

FJ = {"Content-Type": "application/fhir+json"}


def test_dropped_notification_and_history_only_delete(app: App, client: httpx.Client, stub: FhirStub) -> None:
    a1 = stub.put(S.appointment("a1"))
    a2 = stub.put(S.appointment("a2"))
    for r in (a1, a2):
        client.put(f"/fhir/hospital/Appointment/{r['id']}", content=orjson.dumps(r), headers=FJ)
    app.wait_settled()
    stub.put(S.appointment("a1", status="noshow"))  # HAPI gave up after 60 s: never notified
    stub.delete("Appointment", "a2")  # no delete messages configured
    rep = app.call(app.runtime.reconciler.sweep("hospital", ["Appointment"], "reconcile", "interval"))
    assert rep.resources >= 1 and rep.deletes == 1 and not rep.errors
    app.wait_settled()
    got = [(e.resource_key, e.type, e.previous_status, e.arrival) for e in app.events()][2:]
    assert sorted(got) == [("Appointment/a1", "appointment.noshow", "booked", "reconcile"),
                           ("Appointment/a2", "appointment.deleted", "booked", "reconcile")]
    # a second sweep over the overlap window changes nothing: every version it finds is already in the inbox
    again = app.call(app.runtime.reconciler.sweep("hospital", ["Appointment"]))
    assert again.stored == 0 and again.skipped >= 2 and not again.errors
    app.wait_settled()
    assert len(app.events()) == 4
    assert app.kv("fhir.hwm.hospital.Appointment")["at"] >= a1["meta"]["lastUpdated"]


def test_changes_while_down_arrive_at_startup(tmp_path: Path, stub: FhirStub, monkeypatch: pytest.MonkeyPatch,
                                              db_url: str) -> None:
    monkeypatch.setenv("TEST_FHIR_TOKEN_HOSPITAL", TOKEN)
    monkeypatch.setenv("CARELOOP_WEBHOOK_URL", "http://127.0.0.1:9/hooks")
    settings = make_settings(tmp_path, stub.base, db_url)
    e1 = stub.put(S.encounter_r4("e1", status="in-progress"))
    app = App(settings).start()
    with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        c.put("/fhir/hospital/Encounter/e1", content=orjson.dumps(e1), headers=FJ)
        c.put("/fhir/clinic5/Appointment/x", content=orjson.dumps(S.appointment("x", version="1")), headers=FJ)
    app.wait_settled()
    app.stop()
    stub.put(S.encounter_r4("e1", status="finished"))  # careloop is down
    stub.put(S.encounter_r4("e2", status="in-progress"))
    stub.delete("Encounter", "e1")
    app = App(settings).start()
    try:
        app.wait_settled()
        got = [(e.resource_key, e.type, e.arrival) for e in app.events() if e.arrival == "reconcile"]
        assert ("Encounter/e1", "encounter.finished", "reconcile") in got
        assert ("Encounter/e1", "encounter.deleted", "reconcile") in got
        assert ("Encounter/e2", "encounter.in-progress", "reconcile") in got
        assert app.kv("fhir.reconcile.hospital")["reason"] == "startup"
    finally:
        app.stop()


def test_fetcher_retries_429_and_reports_errors(stub: FhirStub) -> None:
    stub.put(S.appointment("a1"))
    f = FhirFetcher(stub.base, FhirAuth(kind="bearer", token_env="X_TOK"), env={"X_TOK": "abc"}, allow_private_network=True)
    stub.fail = [(429, {"Retry-After": "0.2"}), (503, {})]
    t0 = time.monotonic()
    assert f.read("Appointment", "a1")["id"] == "a1"
    assert time.monotonic() - t0 >= 0.2 and f.requests == 3
    assert f.read("Appointment", "nope") is None
    stub.fail = [(400, {})]
    with pytest.raises(FetchError):
        f.read("Appointment", "a1")
    assert len(list(f.search("Appointment", {"_count": "1"}))) == 1
    for i in range(5):
        stub.put(S.appointment(f"b{i}"))
    assert len(list(f.search("Appointment", {"_count": "2", "_sort": "_lastUpdated"}))) == 6  # paged via next links
