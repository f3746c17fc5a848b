"""Synthetic FHIR resources and notification Bundles (R4 backport, R4B, R5) for the tests."""
from __future__ import annotations

from typing import Any

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"

Json = dict[str, Any]
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
BACKPORT_STATUS = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"


def patient(pid: str = "p1", mrn: str = "MRN001") -> Json:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": "Testperson", "given": ["Alex"]}],
            "identifier": [{"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": MRN_SYSTEM, "value": mrn}]}


def appointment(aid: str = "a1", status: str = "booked", start: str = "2031-05-06T14:00:00Z", pid: str = "p1",
                version: str | None = None, last_updated: str | None = None) -> Json:
    r: Json = {"resourceType": "Appointment", "id": aid, "status": status, "start": start, "end": start.replace(":00:00", ":30:00"),
               "serviceType": [{"coding": [{"system": "http://snomed.info/sct", "code": "11429006", "display": "Consultation"}]}],
               "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"},
                               {"actor": {"reference": "Location/l1", "display": "Clinic A"}, "status": "accepted"}]}
    if version:
        r["meta"] = {"versionId": version, "lastUpdated": last_updated or f"2030-01-01T00:00:0{version}Z"}
    return r


def encounter_r4(eid: str = "e1", status: str = "finished", pid: str = "p1") -> Json:
    return {"resourceType": "Encounter", "id": eid, "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": "2030-01-01T10:00:00Z", "end": "2030-01-03T10:00:00Z"},
            "hospitalization": {"dischargeDisposition": {"coding": [{"code": "home"}]}}}


def encounter_r5(eid: str = "e5", status: str = "completed", pid: str = "p1", subject_status: str | None = None) -> Json:
    r: Json = {"resourceType": "Encounter", "id": eid, "status": status,
               "class": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}]}],
               "subject": {"reference": f"Patient/{pid}"},
               "actualPeriod": {"start": "2030-01-01T10:00:00Z", "end": "2030-01-03T10:00:00Z"},
               "admission": {"dischargeDisposition": {"coding": [{"code": "home"}]}},
               "serviceType": [{"concept": {"text": "inpatient"}}],
               "reason": [{"value": [{"concept": {"text": "chest pain"}}, {"reference": {"reference": "Condition/c1"}}]}],
               "diagnosis": [{"condition": [{"reference": {"reference": "Condition/c1"}}], "use": [{"text": "AD"}]}],
               "participant": [{"actor": {"reference": "Practitioner/dr1"}}],
               "plannedStartDate": "2030-01-01T09:00:00Z"}
    if subject_status:
        r["subjectStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/encounter-subject-status", "code": subject_status}]}
    return r


def careplan_r4(cid: str = "cp1", status: str = "active", acts: tuple[str, ...] = ("scheduled",), pid: str = "p1") -> Json:
    return {"resourceType": "CarePlan", "id": cid, "status": status, "intent": "plan", "title": "Diabetes program",
            "subject": {"reference": f"Patient/{pid}"},
            "activity": [{"detail": {"status": st, "code": {"coding": [{"system": "http://snomed.info/sct", "code": f"10{i}"}]},
                                     "scheduledPeriod": {"start": f"2031-0{i + 1}-01T09:00:00Z"}}} for i, st in enumerate(acts)]}


def careplan_r5(cid: str = "cp5", pid: str = "p1", performed: bool = False) -> Json:
    act: Json = {"plannedActivityReference": {"reference": "ServiceRequest/sr1"}}
    act2: Json = {"performedActivity": [{"concept": {"text": "foot exam"}}]} if performed else {"progress": [{"text": "planned"}]}
    return {"resourceType": "CarePlan", "id": cid, "status": "active", "intent": "plan", "subject": {"reference": f"Patient/{pid}"},
            "addresses": [{"reference": {"reference": "Condition/c1"}}], "activity": [act, act2]}


def backport_bundle(ntype: str, numbers: list[int], since: int | None = None, payload: str = "full-resource",
                    resources: list[Json] | None = None, sub: str = "sub-1") -> Json:
    params: list[Json] = [
        {"name": "subscription", "valueReference": {"reference": f"Subscription/{sub}"}},
        {"name": "topic", "valueCanonical": "http://example.org/topic/appointment"},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": ntype},
        {"name": "events-since-subscription-start", "valueString": str(since if since is not None else (max(numbers) if numbers else 0))},
    ]
    resources = resources or []
    for i, n in enumerate(numbers):
        part = [{"name": "event-number", "valueString": str(n)}, {"name": "timestamp", "valueInstant": "2030-01-01T00:00:00Z"}]
        if i < len(resources):
            part.append({"name": "focus", "valueReference": {"reference": f"{resources[i]['resourceType']}/{resources[i]['id']}"}})
        params.append({"name": "notification-event", "part": part})
    return _bundle({"resourceType": "Parameters", "meta": {"profile": [BACKPORT_STATUS]}, "parameter": params}, payload, resources)


def status_bundle(ntype: str, numbers: list[int], version: str = "R4B", payload: str = "full-resource",
                  resources: list[Json] | None = None, sub: str = "sub-2", since: int | None = None) -> Json:
    cast = (lambda n: n) if version == "R5" else str
    resources = resources or []
    st: Json = {"resourceType": "SubscriptionStatus", "status": "active", "type": ntype,
                "eventsSinceSubscriptionStart": cast(since if since is not None else (max(numbers) if numbers else 0)),
                "subscription": {"reference": f"Subscription/{sub}"}, "topic": "http://example.org/topic/encounter",
                "notificationEvent": [{"eventNumber": cast(n), **({"focus": {"reference": f"{resources[i]['resourceType']}/{resources[i]['id']}"}}
                                                                  if i < len(resources) else {})} for i, n in enumerate(numbers)]}
    return _bundle(st, payload, resources)


def _bundle(status: Json, payload: str, resources: list[Json]) -> Json:
    entries: list[Json] = [{"fullUrl": "urn:uuid:status", "resource": status}]
    for r in resources:
        url = f"http://fhir.example/fhir/{r['resourceType']}/{r['id']}"
        if payload == "full-resource":
            entries.append({"fullUrl": url, "resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}})
        elif payload == "id-only":
            entries.append({"fullUrl": url, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}})
    return {"resourceType": "Bundle", "type": "history", "timestamp": "2030-01-01T00:00:00Z", "entry": entries}
