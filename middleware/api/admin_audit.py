"""``GET /api/admin-audit``: the admin audit, newest first, keyset-paginated.

Filters: ``action``, ``actor``, ``since`` (ISO 8601 or epoch seconds). The answer's
``next_before_id`` is passed back as ``before_id`` for the next (older) page; it is
null on the last page.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from ..delivery.admin_audit import parse_since, query
from .deps import TokenDep

router = APIRouter(dependencies=[TokenDep])


@router.get("/api/admin-audit")
def admin_audit(request: Request, action: str | None = None, actor: str | None = None, since: str | None = None,
                before_id: int | None = None, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    try:
        since_ts = parse_since(since) if since else None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    rows, next_before = query(request.app.state.runtime.engine, action=action, actor=actor, since=since_ts,
                              before_id=before_id, limit=limit)
    return {"items": rows, "next_before_id": next_before}
