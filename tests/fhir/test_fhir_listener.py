"""Every notification shape over real HTTP to the running careloop, with the stub FHIR
server behind the fetch paths. Events are read back from the database."""
from __future__ import annotations

import copy

import httpx
import orjson

import fhir_samples as S
from conftest import TOKEN, App
from fhir_stub import FhirStub

FJ = {"Content-Type": "application/fhir+json"}
PKEY = f"{S.MRN_SYSTEM}|MRN001"


def types(app: App, **where: object) -> list[str]:
    return [e.type for e in app.events(**where)]


# -- rest-hook with payload: PUT / DELETE ------------------------------------------------
def test_put_full_resource_echoed_and_applied(app: App, client: httpx.Client, stub: FhirStub) -> None:
    stub.put(S.patient())
    a1 = stub.put(S.appointment())
    r = client.put("/fhir/hospital/Appointment/a1", content=orjson.dumps(a1), headers={**FJ, "User-Agent": "HAPI-FHIR/8.8.0 (FHIR Client)", "X-Careloop-Subscription": "careloop-appointment"})
    assert r.status_code == 201 and r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["id"] == "a1" and r.headers["etag"] == 'W/"1"'
    app.wait_settled()
    [ev] = app.events()
    assert (ev.type, ev.previous_status, ev.arrival, ev.source) == ("appointment.booked", None, "notification", "hospital")
    assert ev.patient_key == PKEY  # the MR identifier of the fetched Patient: same key as HL7v2
    [msg] = app.inbound()
    meta = orjson.loads(msg.meta)
    assert meta["subscription"] == "careloop-appointment" and meta["client"] == "hapi"
    assert "authorization" in meta["header_names"] and TOKEN not in msg.meta


def test_put_update_transition_duplicate_and_older_version(app: App, client: httpx.Client, stub: FhirStub) -> None:
    v1 = stub.put(S.appointment())
    v2 = stub.put(S.appointment(status="cancelled"))
    v3 = stub.put(S.appointment(status="booked", start="2031-05-07T14:00:00Z"))
    for body in (v1, v3, v2, v3):  # reordered, an older version after a newer one, and a duplicate
        assert client.put("/fhir/hospital/Appointment/a1", content=orjson.dumps(body), headers=FJ).status_code in (200, 201)
    app.wait_settled()
    evs = app.events()
    assert [(e.type, e.previous_status) for e in evs] == [("appointment.booked", None), ("appointment.rescheduled", "booked")]
    st = app.state("Appointment/a1")
    assert st is not None and st.version == "3" and st.status == "booked"
    assert [m.status for m in app.inbound()].count("duplicate") == 1


def test_first_sighting_reads_previous_version_from_history(app: App, client: httpx.Client, stub: FhirStub) -> None:
    stub.put(S.encounter_r4(status="in-progress"))
    v2 = stub.put(S.encounter_r4(status="finished"))
    client.put("/fhir/hospital/Encounter/e1", content=orjson.dumps(v2), headers=FJ)
    app.wait_settled()
    [ev] = app.events()
    assert (ev.type, ev.previous_status) == ("encounter.finished", "in-progress")
    assert any("/Encounter/e1/_history/1" in p for p in stub.requests)


def test_delete(app: App, client: httpx.Client, stub: FhirStub) -> None:
    a1 = stub.put(S.appointment())
    client.put("/fhir/hospital/Appointment/a1", content=orjson.dumps(a1), headers=FJ)
    r = client.delete("/fhir/hospital/Appointment/a1")
    assert r.status_code == 200 and r.json()["resourceType"] == "OperationOutcome"
    app.wait_settled()
    assert types(app) == ["appointment.booked", "appointment.deleted"]
    assert app.events()[-1].previous_status == "booked"
    client.delete("/fhir/hospital/Appointment/a1")  # redelivered delete: nothing more
    client.delete("/fhir/hospital/Appointment/never-seen")
    app.wait_settled()
    assert types(app) == ["appointment.booked", "appointment.deleted"]


# -- payload-less rest-hook ----------------------------------------------------------------
def test_payloadless_post_sweeps_type(app: App, client: httpx.Client, stub: FhirStub) -> None:
    stub.put(S.patient())
    stub.put(S.appointment("a1"))
    stub.put(S.appointment("a2", status="proposed"))
    r = client.post("/fhir/hospital/Appointment")  # exactly what HAPI sends: no body, no id
    assert r.status_code == 200
    app.wait_settled()
    evs = app.events()
    assert sorted((e.resource_key, e.type, e.arrival) for e in evs) == [
        ("Appointment/a1", "appointment.booked", "notification"), ("Appointment/a2", "appointment.proposed", "notification")]
    assert any("_lastUpdated=gt" in p and "_sort=_lastUpdated" in p for p in stub.requests)
    r = client.post("/fhir/hospital")  # at the base: every type
    assert r.status_code == 200
    app.wait_settled()
    assert len(app.events()) == 2  # nothing new, versions already held


# -- topic-based notifications ----------------------------------------------------------
def test_backport_full_resource_idonly_empty(app: App, client: httpx.Client, stub: FhirStub) -> None:
    stub.put(S.patient())
    a1 = stub.put(S.appointment("a1"))
    r = client.post("/fhir/hospital", json=S.backport_bundle("handshake", [], since=0))
    assert r.status_code == 200
    r = client.post("/fhir/hospital", json=S.backport_bundle("event-notification", [1], resources=[a1]))
    # HAPI posts the notification as a transaction and resends it unless the answer is a Bundle
    assert r.status_code == 200 and r.json()["resourceType"] == "Bundle" and r.json()["type"] == "transaction-response"
    app.wait_settled()
    assert types(app) == ["appointment.booked"]
    stub.put(S.appointment("a1", status="arrived"))
    client.post("/fhir/hospital", json=S.backport_bundle("event-notification", [2], payload="id-only", resources=[a1]))
    app.wait_settled()
    assert types(app) == ["appointment.booked", "appointment.arrived"]
    assert any(p.startswith("/fhir/Appointment/a1") for p in stub.requests)
    stub.put(S.appointment("a1", status="fulfilled"))
    client.post("/fhir/hospital", json=S.backport_bundle("event-notification", [3], payload="empty", resources=[a1]))
    app.wait_settled()
    assert types(app) == ["appointment.booked", "appointment.arrived", "appointment.fulfilled"]
    assert {e.arrival for e in app.events()} == {"notification"}
    client.post("/fhir/hospital", json=S.backport_bundle("heartbeat", [], since=3))
    app.wait_settled()
    sub = app.kv("fhir.sub.hospital.sub-1")
    assert sub["last_event"] == 3 and sub["last_type"] == "heartbeat" and sub.get("gaps", 0) == 0


def test_r4b_and_r5_bundles_converted_to_r4(app: App, client: httpx.Client, stub: FhirStub) -> None:
    e1 = S.encounter_r4("e1", status="finished")
    e1["meta"] = {"versionId": "1", "lastUpdated": "2030-01-03T10:00:00Z"}
    r = client.post("/fhir/hospital", json=S.status_bundle("event-notification", [1], "R4B", resources=[e1]))
    assert r.status_code == 200
    e5 = S.encounter_r5("e5", status="completed")
    e5["meta"] = {"versionId": "1", "lastUpdated": "2030-01-03T10:00:00Z"}
    r = client.post("/fhir/clinic5", json=S.status_bundle("event-notification", [1], "R5", resources=[e5], sub="sub-5"))
    assert r.status_code == 200
    app.wait_settled()
    evs = app.events()
    assert [(e.type, e.resource_key) for e in evs] == [("encounter.finished", "Encounter/e1"), ("encounter.finished", "Encounter/e5")]
    stored = orjson.loads(app.state("Encounter/e5").resource)
    assert stored["period"]["end"] == "2030-01-03T10:00:00Z" and stored["class"]["code"] == "IMP"
    assert app.kv("fhir.sub.clinic5.sub-5")["shape"] == "R5"


def test_gap_triggers_reconcile_and_reset_does_not(app: App, client: httpx.Client, stub: FhirStub) -> None:
    a1 = stub.put(S.appointment("a1"))
    client.post("/fhir/hospital", json=S.backport_bundle("event-notification", [1], resources=[a1]))
    app.wait_settled()
    missed = stub.put(S.appointment("a2", status="booked"))  # event 2 never arrives
    a1b = stub.put(S.appointment("a1", status="cancelled"))
    client.post("/fhir/hospital", json=S.backport_bundle("event-notification", [3], resources=[a1b]))
    app.wait_settled()
    evs = app.events()
    assert ("Appointment/a2", "appointment.booked", "reconcile") in [(e.resource_key, e.type, e.arrival) for e in evs]
    assert app.kv("fhir.sub.hospital.sub-1")["gaps"] == 1 and missed
    sweeps = len([p for p in stub.requests if "_lastUpdated" in p])
    # HAPI restarted: the counter starts again at 1 -> not a gap, no sweep
    a3 = stub.put(S.appointment("a3"))
    client.post("/fhir/hospital", json=S.backport_bundle("event-notification", [1], resources=[a3]))
    app.wait_settled()
    sub = app.kv("fhir.sub.hospital.sub-1")
    assert sub["gaps"] == 1 and sub["resets"] == 1 and sub["last_event"] == 1
    assert len([p for p in stub.requests if "_lastUpdated" in p]) == sweeps
    assert "appointment.booked" in types(app, resource_key="Appointment/a3")


# -- authentication and bad input -------------------------------------------------------
def test_auth_and_bad_bodies(app: App, stub: FhirStub) -> None:
    a1 = orjson.dumps(S.appointment())
    with httpx.Client(base_url=app.url, timeout=10) as c:
        assert c.put("/fhir/hospital/Appointment/a1", content=a1, headers=FJ).status_code == 401
        r = c.put("/fhir/hospital/Appointment/a1", content=a1, headers={**FJ, "Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
        assert c.put("/fhir/hospital/Appointment/a1", content=a1, headers={**FJ, "X-Careloop-Token": TOKEN}).status_code == 200
        # an unknown source answers 401 before authentication (names cannot be enumerated), 404 after
        assert c.put("/fhir/nosuch/Appointment/a1", content=a1, headers=FJ).status_code == 401
        assert c.put("/fhir/nosuch/Appointment/a1", content=a1, headers={**FJ, "X-Careloop-Token": TOKEN}).status_code == 404
        # a source without a token accepts loopback callers
        assert c.put("/fhir/open/Appointment/a9", content=orjson.dumps(S.appointment("a9")), headers=FJ).status_code == 200
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        bad = [
            c.put("/fhir/hospital/Appointment/a1", content=b"{not json", headers=FJ),
            c.put("/fhir/hospital/Appointment/a1", content=orjson.dumps(S.encounter_r4("a1")), headers=FJ),
            c.put("/fhir/hospital/Appointment/zz", content=a1, headers=FJ),
            c.put("/fhir/hospital/Observation/o1", content=b'{"resourceType":"Observation","id":"o1"}', headers=FJ),
            c.post("/fhir/hospital", content=b'{"resourceType":"Observation","id":"o1"}', headers=FJ),
            c.post("/fhir/hospital", content=b"[1,2]", headers=FJ),
        ]
        for r in bad:
            assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", r.text
    app.wait_settled()
    msgs = app.inbound()
    assert [m.status for m in msgs].count("failed") == len(bad)  # kept for inspection
    assert any(m.raw == b"{not json" for m in msgs)


def test_careplan_activity_events(app: App, client: httpx.Client, stub: FhirStub) -> None:
    v1 = stub.put(S.careplan_r4(acts=("scheduled", "scheduled")))
    v2 = stub.put(S.careplan_r4(acts=("completed", "scheduled")))
    for b in (v1, v2):
        client.put("/fhir/hospital/CarePlan/cp1", content=orjson.dumps(b), headers=FJ)
    app.wait_settled()
    assert types(app) == ["careplan.active", "careplan.activity.scheduled", "careplan.activity.scheduled",
                          "careplan.updated", "careplan.activity.completed"]
    stored = orjson.loads(app.state("CarePlan/cp1").resource)
    assert stored["activity"][1]["detail"]["scheduledPeriod"]["start"] == "2031-02-01T09:00:00Z"
    r5 = S.careplan_r5(performed=True)
    r5["meta"] = {"versionId": "1", "lastUpdated": "2030-01-01T00:00:00Z"}
    client.put("/fhir/clinic5/CarePlan/cp5", content=orjson.dumps(r5), headers=FJ)
    app.wait_settled()
    assert "careplan.activity.completed" in types(app, resource_key="CarePlan/cp5")


def test_patient_identity_shared_with_hl7(app: App, client: httpx.Client, stub: FhirStub) -> None:
    """An Appointment with a subject identifier and no fetchable Patient still keys by MRN."""
    a = S.appointment("a7", pid="unknown")
    a["participant"][0]["actor"]["identifier"] = {"system": S.MRN_SYSTEM, "value": "MRN777"}
    a["meta"] = {"versionId": "1", "lastUpdated": "2030-01-01T00:00:00Z"}
    client.put("/fhir/hospital/Appointment/a7", content=orjson.dumps(a), headers=FJ)
    b = copy.deepcopy(S.appointment("a8", pid="nobody"))
    b["meta"] = {"versionId": "1", "lastUpdated": "2030-01-01T00:00:00Z"}
    client.put("/fhir/hospital/Appointment/a8", content=orjson.dumps(b), headers=FJ)
    app.wait_settled()
    keys = {e.resource_key: e.patient_key for e in app.events()}
    assert keys == {"Appointment/a7": f"{S.MRN_SYSTEM}|MRN777", "Appointment/a8": "hospital|Patient/nobody"}
