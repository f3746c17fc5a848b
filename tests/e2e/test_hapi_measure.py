"""careloop's outcome Measure and MeasureReport, checked by the real HAPI FHIR server's
``$validate`` (the R4 base profiles), and stored and read back."""
from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from middleware.outcomes.analysis import ArmTally
from middleware.outcomes.measure import measure, measure_report

pytestmark = pytest.mark.hapi


def _errors(outcome: dict[str, Any]) -> list[str]:
    return [f"{i.get('severity')}: {i.get('diagnostics')} @ {i.get('expression') or i.get('location')}"
            for i in outcome.get("issue", []) if i.get("severity") in ("error", "fatal")]


def test_measure_and_report_validate_on_hapi(hapi_client: Any) -> None:
    m = measure("noshow-rebooked-14d", "No-show rebooked within 14 days", "common practice")
    r = measure_report("noshow-rebooked-14d", date(2026, 10, 1), date(2026, 12, 31),
                       ArmTally(achieved=56, missed=14, pending=3), ArmTally(achieved=48, missed=32, excluded=2))
    put = hapi_client.put(f"Measure/{m['id']}", json=m, headers={"Content-Type": "application/fhir+json"})
    assert put.status_code in (200, 201), put.text
    for res in (m, r):
        resp = hapi_client.post(f"{res['resourceType']}/$validate", json=res,
                                headers={"Content-Type": "application/fhir+json"})
        body = resp.json()
        assert body.get("resourceType") == "OperationOutcome", body
        assert not _errors(body), _errors(body)
    # stored and read back: HAPI keeps the arm strata and the interval extensions
    created = hapi_client.post("MeasureReport", json=r, headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201, created.text
    back = hapi_client.get(created.headers["Location"].split("/_history")[0].split("fhir/")[-1]).json()
    strata = back["group"][0]["stratifier"][0]["stratum"]
    assert [s["value"]["coding"][0]["code"] for s in strata] == ["treated", "held_out"]
    assert any(e["url"].endswith("difference-interval") for e in back["group"][0]["extension"])
