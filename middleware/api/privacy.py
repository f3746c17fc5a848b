"""Privacy API: FHIR Consents, the suppression list, marketing authorizations, the
disclosure audit, delivery alerts and destination resume. Honoured at send time, so
a suppression or consent recorded here stops the next send immediately."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..delivery import admin, audit
from ..delivery.consent import consent_patient_ref
from ..storage.queries import privacy as q
from ..storage.sql import unit
from .deps import REASON_HEADER, TokenDep, audited, pseudonym

router = APIRouter(dependencies=[TokenDep])


def _engine(request: Request) -> Any:
    return request.app.state.runtime.engine


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


# -- consents ---------------------------------------------------------------
def _consent_json(c: q.ConsentRow) -> dict[str, Any]:
    return {"id": c.id, "patient_key": c.patient_key, "fhir_id": c.fhir_id, "status": c.status, "source": c.source,
            "received_at": iso(c.received_at), "resource": orjson.loads(c.resource)}


def validate_consent(resource: dict[str, Any]) -> None:
    """422 unless ``resource`` is a valid R4B Consent (the API's and the console's check)."""
    from fhir.resources.R4B.consent import Consent

    if resource.get("resourceType") != "Consent":
        raise HTTPException(422, "resourceType must be Consent")
    try:
        Consent.model_validate(resource)
    except Exception as exc:
        raise HTTPException(422, {"error": "invalid FHIR Consent", "detail": str(exc)[:2000]}) from exc


def store_consent(engine: Any, resource: dict[str, Any], patient_key: str | None) -> q.ConsentRow:
    """Store a validated Consent for ``patient_key`` (or the patient it names); 422 when the patient is unknown."""
    key, pid = consent_patient_ref(resource)
    with unit(engine, write=True) as u:
        if patient_key is None and key is None and pid:
            key = q.patient_by_fhir_id(u, pid)
        key = patient_key or key
        if not key:
            raise HTTPException(422, "cannot tell which patient: give patient.identifier, a known Patient/<id>, or ?patient_key=")
        return q.put_consent(u, patient_key=key, fhir_id=resource.get("id"), status=str(resource.get("status")),
                             resource=orjson.dumps(resource).decode(), now=time.time())


def consent_detail(status: str, consent_id: object) -> dict[str, Any]:
    """The admin-audit detail of a stored Consent (``revoked`` for an inactive one)."""
    detail: dict[str, Any] = {"consent_id": consent_id, "status": status}
    if status in ("inactive", "rejected", "entered-in-error"):
        detail["revoked"] = True
    return detail


@router.post("/api/consents", status_code=201)
def consent_post(request: Request, resource: dict[str, Any] = Body(...), patient_key: str | None = None) -> dict[str, Any]:
    """Store a FHIR Consent (validated as R4B). The patient comes from ``patient.identifier``
    (``system|value``), ``patient.reference`` (``Patient/<id>`` of a known patient) or ``?patient_key=``.
    A Consent with the same ``id`` replaces the earlier one."""
    validate_consent(resource)
    with audited(request, "consent.add", "patient") as a:
        a.detail = consent_detail(str(resource.get("status")), resource.get("id"))
        rec = store_consent(_engine(request), resource, patient_key)
        a.target_id = pseudonym(request, rec.patient_key)
    return _consent_json(rec)


@router.get("/api/consents")
def consent_list(request: Request, patient_key: str = Query(...)) -> dict[str, Any]:
    with unit(_engine(request)) as u:
        rows = q.consents_of(u, patient_key)
    return {"items": [_consent_json(c) for c in rows]}


# -- suppressions -------------------------------------------------------------
class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_key: str
    destination: str | None = Field(None, description="None = every destination")
    purpose: str | None = Field(None, description="None = every purpose")
    reason: str = Field("opt-out", max_length=200, description="a category such as 'STOP reply'; no free-text PHI")
    source: Literal["sms-stop", "unsubscribe", "revocation", "operator", "other"] = "operator"


def suppression_json(r: q.SuppressionRow) -> dict[str, Any]:
    return {"id": r.id, "patient_key": r.patient_key, "destination": r.destination, "purpose": r.purpose,
            "reason": r.reason, "source": r.source, "created_at": iso(r.created_at), "revoked_at": iso(r.revoked_at),
            "active": r.revoked_at is None}


@router.get("/api/suppressions")
def suppressions_list(request: Request, patient_key: str | None = None, active: bool = True,
                      limit: int = Query(100, le=1000), before_id: int | None = None) -> dict[str, Any]:
    """Newest first; pass the last item's ``id`` as ``before_id`` for the next page."""
    with unit(_engine(request)) as u:
        rows = q.suppressions(u, patient_key=patient_key or None, active=active, limit=limit, before_id=before_id)
    return {"items": [suppression_json(r) for r in rows]}


def add_suppression(engine: Any, body: SuppressionIn) -> q.SuppressionRow:
    """Record an opt-out (the API's and the console's one write)."""
    with unit(engine, write=True) as u:
        return q.add_suppression(u, patient_key=body.patient_key, destination=body.destination, purpose=body.purpose,
                                 reason=body.reason, source=body.source, created_at=time.time())


def revoke_suppression(engine: Any, suppression_id: int) -> q.SuppressionRow | None:
    """Lift an opt-out (kept, with ``revoked_at``); None when there is no such suppression."""
    with unit(engine, write=True) as u:
        return q.revoke_suppression(u, suppression_id, time.time())


@router.post("/api/suppressions", status_code=201)
def suppressions_add(request: Request, body: SuppressionIn) -> dict[str, Any]:
    """Record an opt-out; it applies from the next send (deliveries are checked at send time)."""
    with audited(request, "suppression.add", "patient", pseudonym(request, body.patient_key)) as a:
        r = add_suppression(_engine(request), body)
        out = suppression_json(r)
        a.detail = {"suppression_id": r.id, "destination": body.destination, "purpose": body.purpose,
                    "source": body.source}
    request.app.state.runtime.wake_deliver.set()
    return out


@router.delete("/api/suppressions/{suppression_id}")
def suppressions_remove(request: Request, suppression_id: int) -> dict[str, Any]:
    """Lift an opt-out (the row is kept with ``revoked_at`` for the record)."""
    with audited(request, "suppression.revoke", "suppression", suppression_id) as a:
        row = revoke_suppression(_engine(request), suppression_id)
        if row is None:
            raise HTTPException(404, "no such suppression")
        a.detail = {"patient": pseudonym(request, row.patient_key)}
        return suppression_json(row)


# -- authorizations -----------------------------------------------------------
class AuthorizationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_key: str
    purpose: str = "marketing"
    reference: str | None = Field(None, max_length=200, description="where the signed authorization is kept")


def authorization_json(a: q.AuthorizationRow) -> dict[str, Any]:
    return {"id": a.id, "patient_key": a.patient_key, "purpose": a.purpose, "reference": a.reference,
            "granted_at": iso(a.granted_at), "revoked_at": iso(a.revoked_at), "active": a.revoked_at is None}


@router.get("/api/authorizations")
def authorizations_list(request: Request, patient_key: str = Query(...)) -> dict[str, Any]:
    with unit(_engine(request)) as u:
        rows = q.authorizations_of(u, patient_key)
    return {"items": [authorization_json(a) for a in rows]}


def add_authorization(engine: Any, body: AuthorizationIn) -> q.AuthorizationRow:
    """Record a marketing authorization (the API's and the console's one write)."""
    with unit(engine, write=True) as u:
        return q.add_authorization(u, patient_key=body.patient_key, purpose=body.purpose, reference=body.reference,
                                   granted_at=time.time())


def revoke_authorization(engine: Any, authorization_id: int) -> q.AuthorizationRow | None:
    """Revoke an authorization (kept, with ``revoked_at``); None when there is no such authorization."""
    with unit(engine, write=True) as u:
        return q.revoke_authorization(u, authorization_id, time.time())


@router.post("/api/authorizations", status_code=201)
def authorizations_add(request: Request, body: AuthorizationIn) -> dict[str, Any]:
    with audited(request, "authorization.add", "patient", pseudonym(request, body.patient_key)) as au:
        a = add_authorization(_engine(request), body)
        au.detail = {"authorization_id": a.id, "purpose": a.purpose}
        return authorization_json(a)


@router.delete("/api/authorizations/{authorization_id}")
def authorizations_revoke(request: Request, authorization_id: int) -> dict[str, Any]:
    """Revoke; pending marketing deliveries for the patient are suppressed at their send time."""
    with audited(request, "authorization.revoke", "authorization", authorization_id) as au:
        row = revoke_authorization(_engine(request), authorization_id)
        if row is None:
            raise HTTPException(404, "no such authorization")
        au.detail = {"patient": pseudonym(request, row.patient_key), "purpose": row.purpose}
        return authorization_json(row)


# -- audit, alerts, destinations ----------------------------------------------
@router.get("/api/audit", response_model=None)
def audit_query(request: Request, patient_key: str = Query(...), destination: str | None = None,
                format: Literal["json", "csv"] = "json") -> Any:
    """Every disclosure about one patient (append-only; kept at least 6 years)."""
    rows = audit.disclosures_for(_engine(request), patient_key, destination=destination)
    if format == "csv":
        return PlainTextResponse(audit.to_csv(rows), media_type="text/csv")
    return {"patient_key": patient_key, "items": rows}


@router.get("/api/alerts")
def alerts_list(request: Request, all: bool = False) -> dict[str, Any]:
    return {"items": admin.alerts(_engine(request), open_only=not all),
            "paused": admin.paused_destinations(_engine(request))}


class DestinationState(BaseModel):
    """A destination as operators see it: ``healthy``, ``paused`` (by an operator), ``auth failure``
    (static credentials refused), ``disabled`` (the endpoint answered 410), ``circuit open`` or
    ``half-open`` (repeated failures; this process's breaker)."""

    name: str
    state: Literal["healthy", "paused", "auth failure", "disabled", "circuit open", "half-open"]
    since: str | None = None
    reason: str | None = None
    by: str | None = None
    configured: bool = True


class DestinationStates(BaseModel):
    items: list[DestinationState]


def destination_states(runtime: Any) -> list[DestinationState]:
    """Every configured (or paused) destination's state, by name."""
    paused = admin.paused_destinations(runtime.engine)
    configured = set(runtime.ruleset().destinations)
    breakers = runtime.breaker_states()
    out = []
    for name in sorted(configured | set(paused)):
        p = paused.get(name)
        state: Any = "healthy"
        if p is not None:
            state = "disabled" if p["kind"] == "disabled" else "paused" if p.get("manual") else "auth failure"
        elif name in breakers:
            state = {"half-open": "half-open", "open-auth": "auth failure"}.get(breakers[name]["state"], "circuit open")
        out.append(DestinationState(name=name, state=state, since=iso(p.get("since")) if p else None,
                                    reason=p.get("reason") if p else None, by=p.get("by") if p else None,
                                    configured=name in configured))
    return out


@router.get("/api/destinations", response_model=DestinationStates)
def destinations(request: Request) -> DestinationStates:
    return DestinationStates(items=destination_states(request.app.state.runtime))


class PauseResult(BaseModel):
    destination: str
    paused: bool


@router.post("/api/destinations/{name}/pause", response_model=PauseResult)
def destination_pause(request: Request, name: str) -> PauseResult:
    """Stop sending to a destination until it is resumed (deliveries wait, pending; nothing is lost)."""
    with audited(request, "destination.pause", "destination", name) as a:
        caller = getattr(request.state, "caller", None)
        done = admin.pause(_engine(request), name, by=caller.actor if caller else "api",
                           reason=request.headers.get(REASON_HEADER))
        a.detail = {"paused": done}
    return PauseResult(destination=name, paused=done)


@router.post("/api/destinations/{name}/resume")
def destination_resume(request: Request, name: str) -> dict[str, Any]:
    """Lift an auth-failure pause or a 410 disable (after fixing the cause) and resolve its alerts."""
    with audited(request, "destination.resume", "destination", name) as a:
        lifted = admin.resume(_engine(request), name)
        a.detail = {"resumed": bool(lifted)}
    request.app.state.runtime.wake_deliver.set()
    return {"destination": name, "resumed": lifted}
