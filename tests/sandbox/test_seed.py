"""middleware.sandbox.seed: deterministic, obviously synthetic, valid FHIR R4 data."""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import date, datetime, timezone

import httpx
import pytest
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner

from middleware.sandbox.seed import (
    MRN_SYSTEM,
    SYNTHETIC_TAG,
    as_transaction_bundle,
    generate,
    post_bundle,
)

ANCHOR = date(2026, 3, 10)
MODELS = {
    "Appointment": Appointment,
    "CarePlan": CarePlan,
    "Encounter": Encounter,
    "Location": Location,
    "Patient": Patient,
    "Practitioner": Practitioner,
}


@pytest.fixture(scope="module")
def resources() -> list[dict]:
    return generate(12, seed=42, anchor=ANCHOR)


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_deterministic(resources: list[dict]) -> None:
    again = generate(12, seed=42, anchor=ANCHOR)
    assert json.dumps(again, sort_keys=True) == json.dumps(resources, sort_keys=True)
    other = generate(12, seed=43, anchor=ANCHOR)
    assert json.dumps(other, sort_keys=True) != json.dumps(resources, sort_keys=True)
    # Same ids whatever the seed, so re-seeding overwrites instead of duplicating.
    assert [r["id"] for r in other] == [r["id"] for r in resources]


def test_counts(resources: list[dict]) -> None:
    counts = Counter(r["resourceType"] for r in resources)
    assert counts == {
        "Location": 3,
        "Practitioner": 2,
        "Patient": 12,
        "Appointment": 24,
        "Encounter": 12,
        "CarePlan": 12,
    }
    assert len({(r["resourceType"], r["id"]) for r in resources}) == len(resources)
    assert generate(0, anchor=ANCHOR)[0]["resourceType"] == "Location"


def test_only_synthetic_markers(resources: list[dict]) -> None:
    for r in resources:
        assert r["id"].startswith("sbx-")
        assert SYNTHETIC_TAG in r["meta"]["tag"]
    text = json.dumps(resources)
    # Every phone number is in the fictional 555-0100..555-0199 block.
    phones = re.findall(r'"system": "phone", "value": "([^"]+)"', text)
    assert phones and all(re.fullmatch(r"555-01\d\d", p) for p in phones)
    # Every e-mail is on the reserved .invalid TLD.
    emails = re.findall(r'"system": "email", "value": "([^"]+)"', text)
    assert emails and all(e.endswith("@example.invalid") for e in emails)
    for p in (r for r in resources if r["resourceType"] == "Patient"):
        assert p["name"][0]["family"] == "Testpatient"
        assert p["identifier"][0]["system"] == MRN_SYSTEM
        assert re.fullmatch(r"SBX\d{6}", p["identifier"][0]["value"])
        assert all(a["city"] == "Testville" for a in p["address"])
    for p in (r for r in resources if r["resourceType"] == "Practitioner"):
        assert p["name"][0]["family"] == "Testdoctor"


def test_valid_r4_models(resources: list[dict]) -> None:
    for r in resources:
        MODELS[r["resourceType"]].model_validate(r)


def test_clinical_shapes(resources: list[dict]) -> None:
    anchor_noon = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)
    appts = [r for r in resources if r["resourceType"] == "Appointment"]
    assert all(a["status"] == "booked" for a in appts)
    assert any(_parse(a["start"]) > anchor_noon for a in appts)
    assert any(_parse(a["start"]) < anchor_noon for a in appts)
    for a in appts:
        assert _parse(a["end"]) > _parse(a["start"])
        kinds = {p["actor"]["reference"].split("/")[0] for p in a["participant"]}
        assert kinds == {"Patient", "Practitioner", "Location"}

    encs = [r for r in resources if r["resourceType"] == "Encounter"]
    finished_imp = [e for e in encs if e["class"]["code"] == "IMP" and e["status"] == "finished"]
    assert finished_imp and all(
        e["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home" for e in finished_imp
    )
    assert any(e["class"]["code"] == "IMP" and e["status"] == "in-progress" for e in encs)
    assert any(e["class"]["code"] == "AMB" for e in encs)

    plans = [r for r in resources if r["resourceType"] == "CarePlan"]
    assert all(p["status"] == "active" and p["activity"][0]["detail"]["status"] == "scheduled" for p in plans)

    ids = {f"{r['resourceType']}/{r['id']}" for r in resources}
    refs = re.findall(r'"reference": "([^"]+)"', json.dumps(resources))
    assert refs and set(refs) <= ids, "every reference resolves inside the generated set"


def test_transaction_bundle(resources: list[dict]) -> None:
    bundle = as_transaction_bundle(resources)
    assert bundle["type"] == "transaction"
    for entry, r in zip(bundle["entry"], resources, strict=True):
        assert entry["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
    Bundle.model_validate(bundle)
    with pytest.raises(ValueError):
        as_transaction_bundle([{"resourceType": "Patient"}])


def test_post_bundle_uses_fhir_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": []})

    bundle = as_transaction_bundle(generate(1, anchor=ANCHOR))
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        out = post_bundle("http://127.0.0.1:8090/fhir/", bundle, client=client)
    assert out["type"] == "transaction-response"
    assert str(seen[0].url) == "http://127.0.0.1:8090/fhir"
    assert seen[0].headers["content-type"] == "application/fhir+json"
    assert json.loads(seen[0].content)["entry"][0]["request"]["method"] == "PUT"
