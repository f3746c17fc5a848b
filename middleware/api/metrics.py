"""``GET /metrics``: Prometheus text format.

Process counters come from :class:`middleware.metrics.Meters`; the rest is read from
the shared database at scrape time (:mod:`middleware.collectors`), so every replica reports the
same backlog, lag, trigger and delivery figures (alert on ``max`` across replicas, not ``sum``).
Unauthenticated like ``/healthz``: it carries counts and destination names, no PHI.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..collectors import install

if TYPE_CHECKING:
    from ..service import Runtime

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    rt: "Runtime" = request.app.state.runtime
    install(rt)
    body = generate_latest(rt.meters.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
