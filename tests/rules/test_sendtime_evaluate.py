"""Send times through ``rules.evaluate`` on the shipped rules: the zone used and why, the steps
``explain`` prints, wait_for + at_time, a skip by ``if_time_passed``."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from middleware.model import ClinicalEvent
from middleware.rules.evaluate import evaluate
from middleware.rules.load import RuleSet, load_ruleset

REPO = Path(__file__).resolve().parents[2]
NY, LA = ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles")


@pytest.fixture(scope="module")
def rs() -> RuleSet:
    rs, diags = load_ruleset(REPO / "mappings")
    assert rs is not None, [str(d) for d in diags]
    return rs


def ed_visit(end: str) -> dict:
    return {"resourceType": "Encounter", "id": "e1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
            "period": {"start": end, "end": end}, "subject": {"reference": "Patient/p1"}}


def ev(resource: dict, etype: str, occurred: datetime) -> ClinicalEvent:
    return ClinicalEvent(type=etype, previous_status="in-progress", status=resource.get("status"),
                         resource_type=resource["resourceType"], resource_key=f"{resource['resourceType']}/{resource['id']}",
                         patient_key="default|Patient/p1", resource=resource, previous=None, source="default",
                         arrival="message", occurred_at=occurred)


def decision(rs, resource, etype, now, **kw):  # noqa: ANN001, ANN201
    return {d.rule_id: d for d in evaluate(ev(resource, etype, now), rs, now=now, **kw)}


def test_patient_timezone_extension_decides_the_send_zone(rs):
    now = datetime(2024, 6, 7, 15, 30, tzinfo=NY)
    patient = {"resourceType": "Patient",
               "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/Los_Angeles"}]}
    d = decision(rs, ed_visit("2024-06-07T15:30:00-04:00"), "encounter.finished", now, patient=patient)["ed-followup-2d"]
    assert d.status == "pending" and d.due_at == datetime(2024, 6, 9, 10, 0, tzinfo=LA)
    assert "send zone America/Los_Angeles: the Patient's timezone extension" in d.steps
    # no patient data: the source's zone, said so
    d = decision(rs, ed_visit("2024-06-07T15:30:00-04:00"), "encounter.finished", now,
                 source_zone="America/Chicago")["ed-followup-2d"]
    assert d.due_at == datetime(2024, 6, 9, 10, 0, tzinfo=ZoneInfo("America/Chicago"))
    assert "send zone America/Chicago: the site's (the source's timezone)" in d.steps


def test_wait_for_then_the_next_send_time(rs):
    now = datetime(2024, 6, 7, 15, 30, tzinfo=NY)  # Friday
    enc = ed_visit("2024-06-07T15:30:00-04:00") | {"class": {"code": "IMP"},
                                                     "hospitalization": {"dischargeDisposition": {"coding": [
                                                         {"system": "http://terminology.hl7.org/CodeSystem/v2-0112", "code": "01"}]}}}
    d = decision(rs, enc, "encounter.finished", now)["tcm-visit-7d"]
    # 2 business days: Tuesday 15:30; the next 10:00 is Wednesday
    assert d.due_at == datetime(2024, 6, 12, 10, 0, tzinfo=NY), d.steps
    assert any("the wait ends at 15:30" in s for s in d.steps)


def test_if_time_passed_skip_is_recorded(rs):
    rule = rs.rule("ed-followup-2d")
    when = rule.rule.when.model_copy(update={"if_time_passed": "skip"})
    patched = dataclasses.replace(rule, rule=rule.rule.model_copy(update={"when": when}))
    rs2 = dataclasses.replace(rs, by_event={"encounter.finished": [patched]})
    now = datetime(2024, 6, 9, 11, 0, tzinfo=NY)  # the send day, after 10:00
    d = decision(rs2, ed_visit("2024-06-07T15:30:00-04:00"), "encounter.finished", now)["ed-followup-2d"]
    assert d.status == "skipped" and "has already passed today (if_time_passed: skip)" in d.reason
    d = decision(rs, ed_visit("2024-06-07T15:30:00-04:00"), "encounter.finished", now)["ed-followup-2d"]
    assert d.status == "pending" and d.due_at == datetime(2024, 6, 10, 10, 0, tzinfo=NY)
