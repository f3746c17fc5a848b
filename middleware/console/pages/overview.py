"""``/``: the overview: ingest per source (HL7 v2 and FHIR), processing lag, due and pending
triggers, deliveries by outcome, dead letters, each destination's state and the reconciler's last
sweep, with sparklines over the last hour and day.

The figures are ``GET /api/overview``'s (``api.overview.figures``): sparklines from the
per-minute rollups, never a count over the messages. The body refreshes itself every 30 s
(htmx polls ``/overview/body``, a fragment of the same template)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...api.overview import figures
from .. import access as a
from ..sparkline import summary, svg
from ..web import render

router = APIRouter()

STATE_CLASS = {"healthy": "ok", "circuit half-open": "warn", "paused": "warn"}


def _context(request: Request) -> dict[str, Any]:
    o = figures(request.app.state.runtime)
    ingest = [{"kind": s.key.split(":", 1)[0], "source": s.key.split(":", 1)[-1], "s": s,
               "rate": s.last_hour / 60.0,
               "hour_svg": svg(s.hour, f"{s.key}: " + summary(s.hour, "hour")),
               "day_svg": svg(s.day, f"{s.key}: " + summary(s.day, "day")),
               "hour_text": summary(s.hour, "hour"), "day_text": summary(s.day, "day")} for s in o.ingest]
    attempts = [{"s": s, "hour_svg": svg(s.hour, f"{s.key}: " + summary(s.hour, "hour", "attempts")),
                 "day_svg": svg(s.day, f"{s.key}: " + summary(s.day, "day", "attempts")),
                 "hour_text": summary(s.hour, "hour", "attempts"), "day_text": summary(s.day, "day", "attempts")}
                for s in o.attempts]
    return {"o": o, "ingest": ingest, "attempts": attempts, "state_class": STATE_CLASS}


@router.get("/")
def overview(request: Request, viewer: Annotated[a.Viewer, a.need(a.OVERVIEW)]) -> Response:
    return render(request, "overview.html", _context(request))


@router.get("/overview/body")
def overview_body(request: Request, viewer: Annotated[a.Viewer, a.need(a.OVERVIEW)]) -> Response:
    """The overview's body alone (htmx refresh)."""
    return render(request, "overview_body.html", _context(request))
