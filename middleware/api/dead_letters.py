"""Operator API for the deliveries that need an operator (the console's Deliveries page reads the
same functions): dead letters, unconfirmed and failing deliveries with their attempts, one delivery
with its attempts and disclosure rows, and how many deliveries a replay would put back."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from ..delivery import admin, audit
from ..storage.statuses import DeliveryStatus
from .deps import TokenDep

router = APIRouter(dependencies=[TokenDep])


class Attempt(BaseModel):
    at: str | None
    outcome: str
    status_code: int | None
    error: str | None
    duration_ms: float


class Delivery(BaseModel):
    id: int
    trigger_id: int
    rule_id: str | None
    destination: str
    status: str
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    last_status_code: int | None
    delivered_at: str | None
    kind: str = "entry"  # entry | exit (issue 17)
    confirmation: str | None = None  # what the vendor's answer proves: accepted | pending | confirmed | unconfirmed
    history: list[Attempt]


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_before_id: int | None


class DeliveryDetail(Delivery):
    disclosures: list[dict[str, Any]]


class ReplayCount(BaseModel):
    count: int


def _engine(request: Request) -> Any:
    return request.app.state.runtime.engine


@router.get("/api/deliveries/problems", response_model=DeliveryPage)
def problems(request: Request, status: str | None = None, destination: str | None = None, rule_id: str | None = None,
             before_id: int | None = None, limit: int = Query(50, ge=1, le=500)) -> DeliveryPage:
    """Dead letters, unconfirmed deliveries and failing ones (pending with an error), or those of
    ``status``; newest first; pass ``next_before_id`` back as ``before_id`` for the next page."""
    items, next_before = admin.problem_deliveries(_engine(request), status=status, destination=destination, rule_id=rule_id,
                                                  before_id=before_id, limit=limit)
    return DeliveryPage(items=[Delivery.model_validate(i) for i in items], next_before_id=next_before)


@router.get("/api/deliveries/replay/count", response_model=ReplayCount)
def replay_count(request: Request, delivery_id: int | None = None, destination: str | None = None,
                 status: str = DeliveryStatus.DEAD, rule_id: str | None = None,
                 reason_contains: str | None = None) -> ReplayCount:
    """How many deliveries ``POST /api/deliveries/replay`` with the same filters would put back."""
    try:
        n = admin.replay_count(_engine(request), delivery_id=delivery_id, destination=destination, status=status,
                               rule_id=rule_id, reason_contains=reason_contains)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return ReplayCount(count=n)


@router.get("/api/deliveries/{delivery_id}", response_model=DeliveryDetail)
def delivery(request: Request, delivery_id: int) -> DeliveryDetail:
    """One delivery, its attempts and its disclosure rows (without the patient key)."""
    d = admin.delivery(_engine(request), delivery_id)
    if d is None:
        raise HTTPException(404, "no such delivery")
    disclosures = audit.disclosures_of_delivery(_engine(request), delivery_id)
    for x in disclosures:
        x.pop("patient_key", None)
    return DeliveryDetail.model_validate({**d, "disclosures": disclosures})
