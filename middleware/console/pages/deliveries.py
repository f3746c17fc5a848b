"""``/deliveries``: dead letters, unconfirmed and failing deliveries with their attempts; one
delivery inspected (attempts, the body as sent, masked, and its disclosure rows); replay of one or
of a filter (after a confirm step that says how many match); pause and resume of a destination.

Reads and actions call what the operator API calls (``delivery.admin``, ``delivery.audit``,
``api.privacy.destination_states``), and every action is written to the admin audit
(``channel=console``, the viewer as actor, the form's reason).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import Response

from ...api.privacy import destination_states
from ...config.policy import identifier_for, outgoing
from ...delivery import admin, audit
from ...delivery.registry import Outbound
from ...storage.queries import operator as oq
from ...storage.sql import unit
from ...storage.statuses import DeliveryStatus
from .. import access as a
from ..mask import MASK, mask_fhir
from ..recording import audit_action
from ..web import render

router = APIRouter()

#: statuses the list filter offers ("" = dead, unconfirmed and failing)
LIST_STATUSES = ("", DeliveryStatus.DEAD, DeliveryStatus.UNCONFIRMED, DeliveryStatus.PENDING, DeliveryStatus.SUPPRESSED,
                 DeliveryStatus.DELIVERED)
#: payload keys that would identify a person if a policy let them through (masked on screen)
IDENTIFYING_KEYS = frozenset({"name", "given", "family", "birthDate", "birth_date", "dob", "address", "telecom", "phone",
                              "email", "identifier", "mrn", "ssn"})


def _engine(request: Request) -> Any:
    return request.app.state.runtime.engine


def _mask_payload(value: Any) -> Any:
    """A payload with FHIR person elements and identifying keys masked (a copy)."""
    value = mask_fhir(value)
    if isinstance(value, dict):
        return {k: MASK if k in IDENTIFYING_KEYS and v not in (None, "", []) else _mask_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_payload(v) for v in value]
    return value


def body_as_sent(request: Request, d: dict[str, Any]) -> dict[str, Any] | None:
    """The outbound body of a delivery as the worker builds it (the trigger's payload projected by the
    destination's current policy, with its contact key), identifiers masked; None when its trigger
    or destination is gone."""
    rt = request.app.state.runtime
    with unit(rt.engine) as u:
        t = oq.trigger(u, d["trigger_id"])
    dest = rt.ruleset().destinations.get(d["destination"])
    if t is None or dest is None:
        return None
    proj = outgoing(orjson.loads(t.payload), dest.policy, f"{rt.delivery.link_base}/api/triggers/{t.id}")
    contact = identifier_for(dest.policy, rt.delivery.contact_secret, t.patient_key)
    occurred = datetime.fromtimestamp(t.fired_at or t.due_at, tz=timezone.utc)
    out = Outbound(delivery_id=d["id"], idempotency_key="-", destination=dest.name, trigger_id=t.id, trigger_name=t.name,
                   rule_id=t.rule_id, purpose=t.purpose, contact_key=contact, payload=dict(proj.payload),
                   occurred_at=occurred, attempt=max(1, d["attempts"])).model_dump(mode="json")
    out.pop("idempotency_key")
    if dest.policy.identifiers == "mrn":
        out["contact_key"] = MASK
    out["payload"] = _mask_payload(out["payload"])
    return out


@router.get("/deliveries")
def deliveries(request: Request, viewer: Annotated[a.Viewer, a.need(a.DELIVERIES)], destination: str = "",
               status: str = "", rule_id: str = "", before_id: int | None = None,
               limit: int = Query(50, ge=1, le=500)) -> Response:
    status = status if status in LIST_STATUSES else ""
    items, next_before = admin.problem_deliveries(_engine(request), status=status or None, destination=destination or None,
                                                  rule_id=rule_id or None, before_id=before_id, limit=limit)
    states = destination_states(request.app.state.runtime)
    return render(request, "deliveries.html", {
        "items": items, "next_before": next_before, "states": states, "statuses": LIST_STATUSES,
        "f": {"destination": destination, "status": status, "rule_id": rule_id}, "before_id": before_id,
        "can_act": viewer.can(a.DELIVERIES_ACT), "replayable": admin.REPLAYABLE,
    })


@router.get("/deliveries/{delivery_id}")
def delivery(request: Request, delivery_id: int, viewer: Annotated[a.Viewer, a.need(a.DELIVERIES)]) -> Response:
    d = admin.delivery(_engine(request), delivery_id)
    if d is None:
        raise HTTPException(404, "no such delivery")
    disclosures = audit.disclosures_of_delivery(_engine(request), delivery_id)
    for x in disclosures:
        x.pop("patient_key", None)  # the MRN-derived key never reaches the page (as in GET /api/deliveries/{id})
    return render(request, "delivery.html", {
        "d": d, "body": body_as_sent(request, d), "disclosures": disclosures, "can_act": viewer.can(a.DELIVERIES_ACT),
        "replayable": d["status"] in admin.REPLAYABLE
    })


def _replay_args(delivery_id: int | None, destination: str, status: str, rule_id: str) -> dict[str, Any]:
    return {"delivery_id": delivery_id, "destination": destination or None, "status": status or DeliveryStatus.DEAD,
            "rule_id": rule_id or None}


@router.post("/deliveries/replay/confirm")
def replay_confirm(request: Request, viewer: Annotated[a.Viewer, a.need(a.DELIVERIES_ACT)],
                   delivery_id: int | None = Form(None), destination: str = Form(""), status: str = Form(""),
                   rule_id: str = Form("")) -> Response:
    """The confirm step: how many deliveries the replay would put back (nothing changes yet)."""
    args = _replay_args(delivery_id, destination, status, rule_id)
    try:
        n = admin.replay_count(_engine(request), **args)
    except ValueError as exc:
        return render(request, "deliveries_result.html", {"error": str(exc)}, status=422)
    return render(request, "deliveries_confirm.html", {"args": args, "count": n})


@router.post("/deliveries/replay")
def replay(request: Request, viewer: Annotated[a.Viewer, a.need(a.DELIVERIES_ACT)], delivery_id: int | None = Form(None),
           destination: str = Form(""), status: str = Form(""), rule_id: str = Form(""),
           reason: str = Form("", max_length=500)) -> Response:
    """Replay one delivery or a filter: the function ``POST /api/deliveries/replay`` calls."""
    args = _replay_args(delivery_id, destination, status, rule_id)
    target = ("delivery", delivery_id) if delivery_id is not None else ("destination", destination or None)
    detail = {k: v for k, v in {"status": args["status"], "rule_id": rule_id, "destination": destination}.items() if v}
    try:
        n = admin.replay(_engine(request), **args)
    except ValueError as exc:
        audit_action(request, viewer, "deliveries.replay", target_kind=target[0], target_id=target[1], reason=reason,
                     outcome="refused", detail={**detail, "error": str(exc)})
        return render(request, "deliveries_result.html", {"error": str(exc)}, status=422)
    audit_action(request, viewer, "deliveries.replay", target_kind=target[0], target_id=target[1], reason=reason,
                 detail={**detail, "replayed": n})
    request.app.state.runtime.wake_deliver.set()
    return render(request, "deliveries_result.html", {"message": f"{n} deliver{'y' if n == 1 else 'ies'} put back to pending.",
                                                      "delivery_id": delivery_id})


@router.post("/deliveries/destinations/{name}/pause")
def pause(request: Request, name: str, viewer: Annotated[a.Viewer, a.need(a.DELIVERIES_ACT)],
          reason: str = Form("", max_length=500)) -> Response:
    """Pause a destination (the function ``POST /api/destinations/{name}/pause`` calls)."""
    done = admin.pause(_engine(request), name, by=viewer.name, reason=reason.strip() or None)
    audit_action(request, viewer, "destination.pause", target_kind="destination", target_id=name, reason=reason,
                 detail={"paused": done})
    return render(request, "deliveries_result.html",
                  {"message": f"{name} paused." if done else f"{name} was already paused."})


@router.post("/deliveries/destinations/{name}/resume")
def resume(request: Request, name: str, viewer: Annotated[a.Viewer, a.need(a.DELIVERIES_ACT)],
           reason: str = Form("", max_length=500)) -> Response:
    """Resume a destination (the function ``POST /api/destinations/{name}/resume`` calls)."""
    lifted = admin.resume(_engine(request), name)
    audit_action(request, viewer, "destination.resume", target_kind="destination", target_id=name, reason=reason,
                 detail={"resumed": lifted})
    request.app.state.runtime.wake_deliver.set()
    return render(request, "deliveries_result.html",
                  {"message": f"{name} resumed." if lifted else f"{name} was not paused."})
