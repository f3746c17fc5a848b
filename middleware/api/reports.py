"""Outcome reports over HTTP: ``GET /api/reports/outcomes`` (every goal), ``.../{goal}``
(JSON, or CSV with ``?format=csv``; ``?by=`` breakdowns) and ``.../{goal}/measure-report?start=&end=``
(a FHIR Bundle of MeasureReports). Aggregates only: no patient appears in a report.

``.../{goal}/export`` is the patient-level export for analysts (outcomes/export.py): de-identified
for callers with the ``journeys`` permission; with ``?limited_data_set=true`` (dates of service, a
HIPAA limited data set) only for callers with ``export.lds`` and with ``?dua=REF``, the data use
agreement's reference. Every export, and every refused one, is written to the admin audit with
the DUA reference."""
from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..config.roles import EXPORT_LDS, JOURNEYS
from ..outcomes import report
from .authn import Caller, request_id
from .deps import TokenDep, require_token

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


@router.get("/api/reports/outcomes/{goal_id}/export", response_class=PlainTextResponse,
            responses={403: {"description": "the caller lacks journeys (or export.lds for a limited data set)"},
                       422: {"description": "a limited data set without a data use agreement reference"}})
def outcomes_export(request: Request, goal_id: str, caller: Annotated[Caller, Depends(require_token)],
                    limited_data_set: bool = False,
                    dua: str | None = Query(None, max_length=200, description="the data use agreement's reference")) -> Response:
    """Patient-level outcomes of one goal as CSV: per-export random ids, arm, versions, outcome, days to it,
    year only; with ``limited_data_set=true`` also the anchor and outcome dates."""
    from ..delivery.admin_audit import record
    from ..outcomes.export import export_csv

    engine = _engine(request)
    action = "outcomes.export_lds" if limited_data_set else "outcomes.export"
    dua = (dua or "").strip() or None

    def audit(outcome: str, detail: dict[str, Any]) -> None:
        record(engine, actor=caller.actor, role=caller.role_label, channel="api", action=action, outcome=outcome,
               target_kind="goal", target_id=goal_id, reason=dua, client=caller.client, request_id=request_id(request),
               detail={"limited_data_set": limited_data_set, **detail})

    needed = EXPORT_LDS if limited_data_set else JOURNEYS
    if needed not in caller.permissions:
        audit("refused", {"why": f"missing permission {needed}"})
        what = "a limited-data-set export (dates of service)" if limited_data_set else "a patient-level outcome export"
        raise HTTPException(403, f"{what} needs the '{needed}' permission; token '{caller.actor}' has roles "
                                 f"{caller.role_label} (CARELOOP_API_TOKEN_ROLES)")
    if limited_data_set and dua is None:
        audit("refused", {"why": "no data use agreement reference"})
        raise HTTPException(422, "a limited data set needs the data use agreement's reference: add ?dua=REF "
                                 "(it is recorded with the export in the admin audit)")
    if goal_id not in {g for g, _ in report.goals(engine)}:
        raise HTTPException(404, f"no journey entries for goal '{goal_id}'")
    text, n = export_csv(engine, goal_id, limited_data_set=limited_data_set, dua=dua)
    audit("ok", {"rows": n})  # written before the file is handed over: no export without its audit row
    name = f"{goal_id}-outcomes{'-lds' if limited_data_set else ''}.csv"
    return PlainTextResponse(text, media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})
