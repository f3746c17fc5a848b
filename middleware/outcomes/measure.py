"""FHIR R4 ``Measure`` (one per goal) and summary ``MeasureReport`` (per experiment period)
for outcome reports.

The report's group has the goal's populations (initial population = journey entries
assigned to an arm, denominator = entries whose outcome is settled, denominator exclusion =
excluded, numerator = achieved); an ``arm`` stratifier carries each arm's populations and
rate; the rates' Wilson intervals and the difference's Newcombe interval travel in an
extension (R4 has no element for them). Pending entries are outside the denominator and
counted in an extension so a reader sees how many are still open.
"""
from __future__ import annotations

from datetime import date
from typing import Any

from middleware.outcomes.analysis import ArmTally, analyse
from middleware.outcomes.stats import Interval

CANONICAL = "https://careloop.dev/fhir"
EXT_INTERVAL = f"{CANONICAL}/StructureDefinition/score-interval"
EXT_DIFFERENCE = f"{CANONICAL}/StructureDefinition/difference-interval"
EXT_PENDING = f"{CANONICAL}/StructureDefinition/pending-count"
POP = "http://terminology.hl7.org/CodeSystem/measure-population"
SCORING = "http://terminology.hl7.org/CodeSystem/measure-scoring"
ARM_SYSTEM = f"{CANONICAL}/CodeSystem/holdout-arm"


def measure_url(goal_id: str) -> str:
    return f"{CANONICAL}/Measure/{goal_id}"


def _cc(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"system": system, "code": code}
    if display:
        c["display"] = display
    return {"coding": [c]}


def measure(goal_id: str, title: str, aligned_with: str, description: str = "") -> dict[str, Any]:
    """The ``Measure`` a goal's reports point at (``status: active``, proportion scoring)."""
    name = "".join(p.capitalize() for p in goal_id.replace(".", "-").replace("_", "-").split("-") if p)
    return {
        "resourceType": "Measure",
        "id": goal_id,
        "url": measure_url(goal_id),
        "name": name or "Goal",
        "title": title,
        "status": "active",
        "description": description or f"careloop goal {goal_id}" + (f", aligned with {aligned_with}" if aligned_with else ""),
        "scoring": _cc(SCORING, "proportion"),
        "improvementNotation": _cc("http://terminology.hl7.org/CodeSystem/measure-improvement-notation", "increase"),
        "group": [{
            "population": [
                {"code": _cc(POP, code), "criteria": {"language": "text/fhirpath", "expression": expr, "description": text}}
                for code, expr, text in _CRITERIA
            ],
            "stratifier": [{"code": {"text": "arm"}, "description": "randomized holdout arm"}],
        }],
    }


#: population criteria as FHIRPath over careloop's journey entry (``%entry``)
_CRITERIA = (
    ("initial-population", "%entry.arm.exists()", "journey entries assigned to an arm"),
    ("denominator", "%entry.outcome != 'pending'", "entries whose goal window has closed or that are settled"),
    ("denominator-exclusion", "%entry.outcome = 'excluded'", "entries the goal's definition excludes"),
    ("numerator", "%entry.outcome = 'achieved'", "entries whose goal was reached within its window"),
)


def _interval_ext(url: str, iv: Interval) -> dict[str, Any]:
    return {"url": url, "extension": [
        {"url": "low", "valueDecimal": round(iv.low, 6)},
        {"url": "high", "valueDecimal": round(iv.high, 6)},
        {"url": "confidence", "valueDecimal": 0.95},
    ]}


def _populations(t: ArmTally) -> list[dict[str, Any]]:
    return [
        {"code": _cc(POP, "initial-population"), "count": t.assigned},
        {"code": _cc(POP, "denominator"), "count": t.resolved + t.excluded},
        {"code": _cc(POP, "denominator-exclusion"), "count": t.excluded},
        {"code": _cc(POP, "numerator"), "count": t.achieved},
    ]


def measure_report(goal_id: str, start: date, end: date, treated: ArmTally, control: ArmTally | None,
                   *, min_lift: float = 0.05, holdout_share: float = 0.1, report_id: str | None = None) -> dict[str, Any]:
    """A summary ``MeasureReport`` for one goal and period (``end`` inclusive)."""
    total = ArmTally(*(a + b for a, b in zip(_fields(treated), _fields(control or ArmTally()))))
    group: dict[str, Any] = {"population": _populations(total)}
    if total.resolved:
        group["measureScore"] = {"value": round(total.achieved / total.resolved, 6)}
    group["extension"] = [{"url": EXT_PENDING, "valueInteger": total.pending}]
    if control is not None:
        a = analyse(treated, control, min_lift=min_lift, holdout_share=holdout_share)
        strata = []
        for code, display, tally in (("treated", "Treated", treated), ("held_out", "Held out", control)):
            stratum: dict[str, Any] = {"value": _cc(ARM_SYSTEM, code, display), "population": _populations(tally)}
            if tally.resolved:
                stratum["measureScore"] = {"value": round(tally.achieved / tally.resolved, 6)}
            if a.itt is not None:
                iv = a.itt.treated_rate if code == "treated" else a.itt.control_rate
                stratum["extension"] = [_interval_ext(EXT_INTERVAL, iv)]
            strata.append(stratum)
        group["stratifier"] = [{"code": [{"text": "arm"}], "stratum": strata}]
        if a.itt is not None:
            group["extension"].append(_interval_ext(EXT_DIFFERENCE, a.itt.difference))
    report: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": measure_url(goal_id),
        "date": date.today().isoformat(),
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "improvementNotation": _cc("http://terminology.hl7.org/CodeSystem/measure-improvement-notation", "increase"),
        "group": [group],
    }
    if report_id:
        report["id"] = report_id
    return report


def _fields(t: ArmTally) -> tuple[int, ...]:
    return (t.achieved, t.missed, t.excluded, t.pending, t.delivered_achieved, t.delivered_missed)
