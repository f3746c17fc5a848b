"""Outcome reports over HTTP: ``GET /api/reports/outcomes`` (every goal), ``.../{goal}``
(JSON, or CSV with ``?format=csv``) and ``.../{goal}/measure-report?start=&end=`` (a FHIR
Bundle of MeasureReports). Aggregates only: no patient appears in a report."""
from __future__ import annotations

from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..outcomes import report
from .deps import TokenDep

router = APIRouter(dependencies=[TokenDep])


def _engine(request: Request) -> Any:
    return request.app.state.runtime.engine


@router.get("/api/reports/outcomes")
def outcomes_all(request: Request, min_lift: float = Query(0.05, gt=0, lt=1)) -> dict[str, Any]:
    engine = _engine(request)
    reports = [r for g, _ in report.goals(engine) for r in report.build(engine, g, min_lift=min_lift)]
    return report.as_json(reports)


@router.get("/api/reports/outcomes/{goal_id}", response_model=None)
def outcomes_goal(request: Request, goal_id: str, format: Literal["json", "csv"] = "json",
                  min_lift: float = Query(0.05, gt=0, lt=1),
                  by: list[str] | None = Query(None, description=(
                      "breakdowns: rule_version, destination, month, week (repeat or comma list)"))) -> Response | dict[str, Any]:
    engine = _engine(request)
    try:
        dims = report.parse_by(by)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if goal_id not in {g for g, _ in report.goals(engine)}:
        raise HTTPException(404, f"no journey entries for goal '{goal_id}'")
    reports = report.build(engine, goal_id, min_lift=min_lift, by=dims)
    if format == "csv":
        return PlainTextResponse(report.as_csv(reports), media_type="text/csv")
    return report.as_json(reports)


@router.get("/api/reports/outcomes/{goal_id}/measure-report")
def outcomes_measure(request: Request, goal_id: str, start: date, end: date) -> JSONResponse:
    engine = _engine(request)
    if end < start:
        raise HTTPException(422, "end is before start")
    if goal_id not in {g for g, _ in report.goals(engine)}:
        raise HTTPException(404, f"no journey entries for goal '{goal_id}'")
    items = report.as_measure_reports(report.build(engine, goal_id), start, end)
    return JSONResponse({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in items]},
                        media_type="application/fhir+json")
