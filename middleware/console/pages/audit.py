"""``/audit``: the admin audit log (the query ``GET /api/admin-audit`` serves: filters actor, action,
since; newest first; keyset pages) and its CSV export, itself recorded in the log."""
from __future__ import annotations

import csv
import json
import io
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from ...delivery.admin_audit import MAX_PAGE, parse_since, query
from .. import access as a
from ..recording import audit_action
from ..web import render

router = APIRouter()

#: rows an export holds at most (pages of MAX_PAGE read by keyset)
EXPORT_MAX = 100_000
CSV_COLUMNS = ["id", "at", "actor", "role", "channel", "action", "outcome", "target_kind", "target_id", "reason", "client",
               "request_id", "detail"]


def _filters(actor: str, action: str, since: str) -> tuple[dict[str, Any], str | None]:
    """The query's filters, or an error message for an unreadable ``since``."""
    try:
        since_ts = parse_since(since.strip()) if since.strip() else None
    except ValueError as exc:
        return {}, str(exc)
    return {"actor": actor.strip() or None, "action": action.strip() or None, "since": since_ts}, None


@router.get("/audit")
def audit_page(request: Request, viewer: Annotated[a.Viewer, a.need(a.AUDIT)], actor: str = "", action: str = "",
               since: str = "", before_id: int | None = None, limit: int = Query(100, ge=1, le=MAX_PAGE)) -> Response:
    filters, error = _filters(actor, action, since)
    rows: list[dict[str, Any]] = []
    next_before = None
    if error is None:
        rows, next_before = query(request.app.state.runtime.engine, before_id=before_id, limit=limit, **filters)
    return render(request, "audit.html", {"rows": rows, "next_before": next_before, "error": error, "before_id": before_id,
                                          "f": {"actor": actor, "action": action, "since": since}},
                  status=422 if error else 200)


@router.get("/audit.csv")
def audit_export(request: Request, viewer: Annotated[a.Viewer, a.need(a.AUDIT)], actor: str = "", action: str = "",
                 since: str = "") -> Response:
    """Every row matching the filters (newest first, at most ``EXPORT_MAX``) as CSV; the export is audited."""
    filters, error = _filters(actor, action, since)
    if error is not None:
        return PlainTextResponse(error, status_code=422)
    engine = request.app.state.runtime.engine
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    before: int | None = None
    n = 0
    while n < EXPORT_MAX:
        rows, before = query(engine, before_id=before, limit=MAX_PAGE, **filters)
        for r in rows:
            w.writerow({**r, "detail": "" if r["detail"] is None else json.dumps(r["detail"], sort_keys=True)})
        n += len(rows)
        if before is None:
            break
    audit_action(request, viewer, "admin-audit.export", target_kind="admin-audit",
                 detail={"rows": n, "format": "csv", **{k: v for k, v in filters.items() if v is not None}})
    return PlainTextResponse(buf.getvalue(), media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="admin-audit.csv"'})
