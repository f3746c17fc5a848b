"""Evaluation of single events against the shipped rule set (pure; no database)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from middleware.model import ClinicalEvent
from middleware.rules.evaluate import cancellations, diagnoses, evaluate
from middleware.rules.load import RuleSet, load_ruleset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rs() -> RuleSet:
    rs, diags = load_ruleset(REPO / "mappings")
    assert rs is not None, [str(d) for d in diags]
    return rs


def appt(start: str, status: str = "booked") -> dict:
    return {"resourceType": "Appointment", "id": "a1", "status": status, "start": start,
            "participant": [{"actor": {"reference": "Patient/p1"}}]}


def event(resource: dict, etype: str, occurred: datetime, previous_status: str | None = None) -> ClinicalEvent:
    return ClinicalEvent(type=etype, previous_status=previous_status, status=resource.get("status"),
                         resource_type=resource["resourceType"], resource_key=f"{resource['resourceType']}/{resource['id']}",
                         patient_key="default|Patient/p1", resource=resource, previous=None, source="default",
                         arrival="message", occurred_at=occurred)


def by_rule(decisions):
    return {d.rule_id: d for d in decisions}


def test_reminders_scheduled_and_payload_carries_purpose(rs):
    now = datetime(2024, 3, 1, 14, tzinfo=timezone.utc)
    d = by_rule(evaluate(event(appt("2024-03-11T14:00:00-04:00"), "appointment.booked", now), rs, now=now))
    assert d["appointment-reminder-24h"].status == "pending"
    assert d["appointment-reminder-24h"].due_at == datetime(2024, 3, 10, 18, tzinfo=timezone.utc)
    assert d["appointment-reminder-24h"].payload["purpose"] == "treatment-reminder"


def test_deceased_patient_is_suppressed(rs):
    now = datetime(2024, 3, 1, 14, tzinfo=timezone.utc)
    ds = evaluate(event(appt("2024-03-11T14:00:00-04:00"), "appointment.booked", now), rs, now=now,
                  patient={"resourceType": "Patient", "deceasedBoolean": True})
    assert {d.status for d in ds if d.rule_id != "colonoscopy-prep-5bd"} == {"suppressed"}  # its where is false


def test_hospice_fact_suppresses(rs):
    now = datetime(2024, 3, 1, 14, tzinfo=timezone.utc)
    ds = evaluate(event(appt("2024-03-11T14:00:00-04:00"), "appointment.booked", now), rs, now=now, hospice="active hospice care plan")
    assert all(d.status == "suppressed" and "hospice" in d.reason for d in ds if d.rule_id != "colonoscopy-prep-5bd")


def test_age_gate_in_where(rs):
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
           "period": {"end": "2024-06-03T11:00:00-04:00"},
           "contained": [{"resourceType": "Condition", "id": "dg1-1", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F32.9"}]}}],
           "diagnosis": [{"condition": {"reference": "#dg1-1"}}]}
    assert diagnoses(enc)[0]["coding"][0]["code"] == "F32.9"
    now = datetime(2024, 6, 3, 15, tzinfo=timezone.utc)
    adult = by_rule(evaluate(event(enc, "encounter.finished", now), rs, now=now, patient={"birthDate": "1990-01-01"}))
    child = by_rule(evaluate(event(enc, "encounter.finished", now), rs, now=now, patient={"birthDate": "2020-01-01"}))
    assert adult["fuh-followup-7d"].status == "pending"
    assert child["fuh-followup-7d"].fired is False and "where is false" in child["fuh-followup-7d"].reason


def test_cancellation_condition_sees_the_origin(rs):
    now = datetime(2024, 6, 3, 16, tzinfo=timezone.utc)
    origin = {"resourceType": "Encounter", "period": {"end": "2024-06-03T11:00:00-04:00"}}
    same_day = appt("2024-06-03T16:00:00-04:00") | {"serviceType": [{"coding": [{"system": "urn:careloop:synthetic:visit-type", "code": "BH-FOLLOWUP"}]}]}
    day3 = same_day | {"start": "2024-06-06T10:00:00-04:00"}
    for res, expected in ((same_day, False), (day3, True)):
        cs = [c for c in cancellations(event(res, "appointment.booked", now), rs, None, now) if c.rule_id == "fuh-followup-7d"]
        assert [c.applies(origin, {}) for c in cs] == [expected]
