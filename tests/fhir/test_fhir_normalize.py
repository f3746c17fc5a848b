"""R4B/R5 -> R4 conversion (validated with fhir.resources R4B models), version detection,
notification parsing and patient identity (pure functions, no app)."""
from __future__ import annotations

import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.encounter import Encounter

import fhir_samples as S
from middleware.normalize.fhir import detect_version, patient_key_from_reference, to_r4
from middleware.normalize.fhir_notification import NotificationError, parse_notification
from middleware.pipeline.fhir_handler import track_events

MODELS = {"Appointment": Appointment, "Encounter": Encounter, "CarePlan": CarePlan}


def valid_r4(r: dict) -> dict:
    MODELS[r["resourceType"]].model_validate(r)
    return r


@pytest.mark.parametrize("status,expected", [("completed", "finished"), ("discharged", "finished"),
                                             ("in-progress", "in-progress"), ("on-hold", "onleave")])
def test_r5_encounter_status(status: str, expected: str) -> None:
    r = valid_r4(to_r4(S.encounter_r5(status=status), "R5"))
    assert r["status"] == expected
    assert r["period"]["start"] == "2030-01-01T10:00:00Z" and "actualPeriod" not in r
    assert r["class"] == {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}
    assert r["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"
    assert r["reasonCode"] == [{"text": "chest pain"}] and r["reasonReference"] == [{"reference": "Condition/c1"}]
    assert r["participant"] == [{"individual": {"reference": "Practitioner/dr1"}}]


def test_r5_subject_status_refines_in_progress() -> None:
    r = valid_r4(to_r4(S.encounter_r5(status="in-progress", subject_status="arrived")))
    assert r["status"] == "arrived"
    assert r["extension"][0]["url"].endswith("Encounter.subjectStatus")


def test_r5_appointment_codeable_references() -> None:
    a = S.appointment()
    a["serviceType"] = [{"concept": {"text": "Consult"}}, {"reference": {"reference": "HealthcareService/h1"}}]
    a["class"] = [{"coding": [{"code": "AMB"}]}]
    a["participant"][0]["required"] = True
    a["subject"] = {"reference": "Patient/p1"}
    a["note"] = [{"text": "bring list"}]
    a["cancellationDate"] = "2030-01-01T00:00:00Z"
    r = valid_r4(to_r4(a, "R5"))
    assert r["serviceType"] == [{"text": "Consult"}] and r["comment"] == "bring list"
    assert r["participant"][0]["required"] == "required" and len(r["participant"]) == 2
    assert {e["url"].rsplit("-", 1)[-1] for e in r["extension"]} == {"Appointment.class", "Appointment.serviceType", "Appointment.cancellationDate"}


def test_r5_careplan_without_detail() -> None:
    r = valid_r4(to_r4(S.careplan_r5(performed=True), "R5"))
    assert r["activity"][0] == {"reference": {"reference": "ServiceRequest/sr1"}}
    assert r["activity"][1]["detail"]["status"] == "completed"
    assert r["activity"][1]["outcomeCodeableConcept"] == [{"text": "foot exam"}]
    assert r["addresses"] == [{"reference": "Condition/c1"}]
    assert valid_r4(to_r4(S.careplan_r5(performed=False)))["activity"][1]["detail"]["status"] == "unknown"


def test_r4_untouched_and_versions_detected() -> None:
    e = S.encounter_r4()
    assert to_r4(e) is e and valid_r4(e)
    assert valid_r4(to_r4(S.careplan_r4(), "R4B"))
    assert detect_version(S.encounter_r5()) == "R5"
    assert detect_version({"resourceType": "Encounter", "meta": {"profile": ["http://hl7.org/fhir/4.3/x"]}}) == "R4B"
    assert detect_version(S.appointment(), "R4B") == "R4B"


def test_patient_key_rules() -> None:
    class Src:
        name = "hospital"

        class hl7:
            mrn_authority = "HOSP"

            @staticmethod
            def system_for(a: str) -> str:
                return S.MRN_SYSTEM

        class fhir:
            identifier_systems: list[str] = []

    a = S.appointment()
    assert patient_key_from_reference(a, Src, fetch=lambda pid: S.patient(pid, "M9")) == f"{S.MRN_SYSTEM}|M9"
    assert patient_key_from_reference(a, "hospital") == "hospital|Patient/p1"
    other = S.patient()
    other["identifier"] = [{"system": "urn:other", "value": "X"}, {"type": {"coding": [{"code": "MR"}]}, "system": "urn:mr", "value": "7"}]
    assert patient_key_from_reference(a, "h", fetch=lambda pid: other) == "urn:mr|7"
    assert patient_key_from_reference({"resourceType": "Encounter", "id": "x"}, "h") is None


def test_parse_notifications() -> None:
    n = parse_notification(S.backport_bundle("event-notification", [4, 5], resources=[S.appointment("a1"), S.appointment("a2")]))
    assert (n.type, n.event_numbers, n.payload, n.subscription_id, n.shape) == ("event-notification", (4, 5), "full-resource", "sub-1", "R4-backport")
    n = parse_notification(S.status_bundle("event-notification", [7], "R4B", payload="id-only", resources=[S.encounter_r4()]))
    assert (n.payload, n.focus, n.shape, n.events_since_start) == ("id-only", ("Encounter/e1",), "R4B", 7)
    n = parse_notification(S.status_bundle("heartbeat", [], "R5", since=9))
    assert (n.type, n.shape, n.events_since_start, n.payload) == ("heartbeat", "R5", 9, "empty")
    with pytest.raises(NotificationError):
        parse_notification({"resourceType": "Bundle", "entry": [{"resource": S.appointment()}]})
    bad = S.backport_bundle("event-notification", [1])
    bad["entry"][0]["resource"]["parameter"][3]["valueCode"] = "nonsense"
    with pytest.raises(NotificationError):
        parse_notification(bad)


def test_track_events_gap_reset_reorder() -> None:
    st: dict = {}
    ev = lambda *n: parse_notification(S.backport_bundle("event-notification", list(n)))  # noqa: E731
    assert track_events(st, ev(1)) == (False, False)
    assert track_events(st, ev(3)) == (True, False) and st["missing"] == [2]
    assert track_events(st, ev(2)) == (False, False) and st["missing"] == []  # late, not a reset
    assert track_events(st, ev(1)) == (False, True) and st["last_event"] == 1  # restart
    hb = parse_notification(S.backport_bundle("heartbeat", [], since=4))
    assert track_events(st, hb) == (True, False)  # heartbeat says 4 events happened, we saw 1
