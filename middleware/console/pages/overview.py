"""``/``: the overview (ingest, lag, triggers, deliveries, destinations, reconciler)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import access as a
from ..web import render

router = APIRouter()


@router.get("/")
def overview(request: Request, viewer: Annotated[a.Viewer, a.need(a.OVERVIEW)]) -> Response:
    return render(request, "overview.html", {})
