"""Measure and MeasureReport resources are valid FHIR (checked with the fhir.resources models;
the HAPI $validate check is in tests/e2e)."""
from __future__ import annotations

from datetime import date

from fhir.resources.R4B.measure import Measure
from fhir.resources.R4B.measurereport import MeasureReport

from middleware.outcomes.analysis import ArmTally
from middleware.outcomes.measure import measure, measure_report, measure_url


def test_measure_and_report_parse_with_the_fhir_models() -> None:
    m = Measure.model_validate(measure("fuh-7d", "FUH-aligned 7-day follow-up", "NCQA HEDIS FUH"))
    assert m.url == measure_url("fuh-7d")
    r = measure_report("fuh-7d", date(2026, 1, 1), date(2026, 3, 31),
                       ArmTally(achieved=56, missed=14, pending=3), ArmTally(achieved=48, missed=32, excluded=2))
    mr = MeasureReport.model_validate(r)
    assert mr.measure == m.url and mr.type == "summary"
    group = r["group"][0]
    counts = {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}
    assert counts == {"initial-population": 155, "denominator": 152, "denominator-exclusion": 2, "numerator": 104}
    strata = group["stratifier"][0]["stratum"]
    assert [s["value"]["coding"][0]["code"] for s in strata] == ["treated", "held_out"]
    assert strata[0]["measureScore"]["value"] == 0.8
    diff = {e["url"]: e for e in group["extension"]}
    ext = next(v for k, v in diff.items() if k.endswith("difference-interval"))
    bounds = {x["url"]: x["valueDecimal"] for x in ext["extension"]}
    assert round(bounds["low"], 4) == 0.0524 and round(bounds["high"], 4) == 0.3339  # Newcombe's example


def test_report_without_holdout_has_no_strata() -> None:
    r = measure_report("reminder-kept", date(2026, 1, 1), date(2026, 1, 31), ArmTally(achieved=3, missed=1), None)
    MeasureReport.model_validate(r)
    assert "stratifier" not in r["group"][0]
