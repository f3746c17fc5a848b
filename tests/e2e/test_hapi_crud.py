"""The sandbox serves the FHIR interactions careloop uses: transaction seeding, read, search
(identifier, ``_lastUpdated``), update and ``_history``."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from middleware.sandbox import hapi
from middleware.sandbox.seed import MRN_SYSTEM, as_transaction_bundle, generate, post_bundle

pytestmark = [pytest.mark.hapi, pytest.mark.timeout(900)]
FHIR_JSON = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


def test_capability_statement_is_r4(hapi_base_url: str) -> None:
    meta = httpx.get(f"{hapi_base_url}/metadata", headers=FHIR_JSON, timeout=30).json()
    assert meta["resourceType"] == "CapabilityStatement"
    assert meta["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in meta["rest"][0]["resource"]}
    assert {"Patient", "Appointment", "Encounter", "CarePlan", "Subscription"} <= types


def test_seed_search_update_history(hapi_base_url: str) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    resources = generate(6, seed=7)
    bundle = as_transaction_bundle(resources)
    first = post_bundle(hapi_base_url, bundle)
    assert first["type"] == "transaction-response"
    assert len(first["entry"]) == len(resources)
    # Re-seeding is idempotent: same ids, no duplicates.
    post_bundle(hapi_base_url, bundle)

    with httpx.Client(base_url=hapi_base_url + "/", headers=FHIR_JSON, timeout=30) as c:
        found = c.get("Patient", params={"identifier": f"{MRN_SYSTEM}|SBX000001"}).json()
        assert found["total"] == 1
        pat = found["entry"][0]["resource"]
        assert pat["id"] == "sbx-pat-0001" and pat["name"][0]["family"] == "Testpatient"

        since = before.strftime("%Y-%m-%dT%H:%M:%SZ")
        recent = c.get("Appointment", params={"_lastUpdated": f"ge{since}", "_count": 100}).json()
        recent_ids = {e["resource"]["id"] for e in recent.get("entry", [])}
        assert {"sbx-appt-0001-f", "sbx-appt-0001-p"} <= recent_ids

        appt = c.get("Appointment/sbx-appt-0002-f").json()
        appt["status"] = "cancelled"
        put = c.put("Appointment/sbx-appt-0002-f", json=appt)
        assert put.status_code == 200
        hist = c.get("Appointment/sbx-appt-0002-f/_history").json()
        statuses = [e["resource"]["status"] for e in hist["entry"]]
        assert hist["type"] == "history" and statuses[0] == "cancelled" and "booked" in statuses

        enc = c.get("Encounter", params={"class": "IMP", "status": "finished", "subject": "Patient/sbx-pat-0001"}).json()
        assert enc["total"] == 1
        assert enc["entry"][0]["resource"]["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"


def test_start_is_idempotent(hapi_sandbox: hapi.SandboxHandle, tmp_path) -> None:
    if hapi_sandbox.pid is None and hapi_sandbox.runtime != "docker":
        pytest.skip("sandbox was not started by this session")
    again = hapi.start(port=hapi_sandbox.port, workdir=hapi_sandbox.log_path.parent, runtime=hapi_sandbox.runtime)
    assert again.reused and again.base_url == hapi_sandbox.base_url and again.run_id == hapi_sandbox.run_id
    # from another work directory it is somebody else's server: refused, never adopted
    with pytest.raises(hapi.SandboxError, match="did not start"):
        hapi.start(port=hapi_sandbox.port, workdir=tmp_path, runtime=hapi_sandbox.runtime)
