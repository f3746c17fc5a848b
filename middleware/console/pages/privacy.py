"""``/privacy``: suppressions, marketing authorizations and consents (view, add, revoke) and the
disclosure audit of one patient with its CSV export.

Patients appear by careloop's internal id (``pt_...``) in links and on screen, never by MRN: an
MRN (the patient key, ``system|value``) is only ever typed into a POST form to add a record or to
find a patient. Writes go through the functions and models the privacy API uses
(``api.privacy``), and each is written to the admin audit with the action name the API uses,
``channel=console``, the patient as the API records it (its contact key) and the form's reason.
"""
from __future__ import annotations

import secrets
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from pydantic import ValidationError

from ...api import privacy as api
from ...api.deps import pseudonym
from ...delivery import audit
from ...storage import patient_ids
from ...storage.queries import privacy as q
from ...storage.sql import unit
from .. import access as a
from ..recording import audit_action
from ..web import render

router = APIRouter()

PATIENT_ID = r"^pt_[a-z2-7]{26}$"
SOURCES = ("operator", "sms-stop", "unsubscribe", "revocation", "other")


class NoPatient(Exception):
    """The form named no patient careloop can resolve."""


def _engine(request: Request) -> Any:
    return request.app.state.runtime.engine


def _keys(request: Request, patient_id: str) -> list[str]:
    """The patient keys of ``patient_id`` (of its survivor when it was merged away: old links still work)."""
    with unit(_engine(request)) as u:
        current = patient_ids.current_patient_id(u, patient_id)
        return patient_ids.keys_of_patient(u, current) if current else []


def _resolve(request: Request, patient_id: str, patient_key: str) -> tuple[str, str]:
    """(patient key, internal id) of the form's patient: an internal id careloop knows, or a typed
    ``system|MRN`` (issued an internal id if careloop has none for it yet, so it can be linked)."""
    patient_key = patient_key.strip()
    if patient_key:
        if "|" not in patient_key:
            raise NoPatient("Give the identifier as system|value (e.g. urn:oid:2.16.840.1.113883.19|12345).")
        with unit(_engine(request), write=True) as u:
            pid = patient_ids.resolve_patient_id(u, patient_key) or patient_ids.patient_id_for(u, patient_key, time.time())
        assert pid is not None
        return patient_key, pid
    keys = _keys(request, patient_id.strip()) if patient_id.strip() else []
    if not keys:
        raise NoPatient("No such patient: give an internal patient id (pt_...) or an identifier (system|value).")
    return keys[0], patient_id.strip()


def _ids(request: Request, keys: list[str]) -> dict[str, str]:
    with unit(_engine(request)) as u:
        return patient_ids.ids_of_keys(u, keys)


def _done(request: Request, message: str, patient_id: str | None = None, status: int = 200, error: bool = False) -> Response:
    return render(request, "privacy_result.html", {"message": message, "patient_id": patient_id, "error": error},
                  status=status)


@router.get("/privacy")
def privacy(request: Request, viewer: Annotated[a.Viewer, a.need(a.PRIVACY)], before_id: int | None = None,
            limit: int = Query(100, ge=1, le=1000)) -> Response:
    with unit(_engine(request)) as u:
        rows = q.suppressions(u, patient_key=None, active=True, limit=limit + 1, before_id=before_id)
    next_before = rows[limit - 1].id if len(rows) > limit else None
    rows = rows[:limit]
    ids = _ids(request, [r.patient_key for r in rows])
    items = [{**api.suppression_json(r), "patient_id": ids.get(r.patient_key)} for r in rows]
    for x in items:
        x.pop("patient_key")
    return render(request, "privacy.html", {"suppressions": items, "can_act": viewer.can(a.PRIVACY_ACT),
                                            "sources": SOURCES, "next_before": next_before, "before_id": before_id})


@router.post("/privacy/find")
def find(request: Request, viewer: Annotated[a.Viewer, a.need(a.PRIVACY)], patient_key: str = Form("", max_length=300),
         patient_id: str = Form("", max_length=40)) -> Response:
    """Go to a patient's privacy page from an identifier typed into the form (kept out of the URL)."""
    try:
        with unit(_engine(request)) as u:
            pid = patient_ids.resolve_patient_id(u, patient_key.strip()) if patient_key.strip() else None
        if pid is None and patient_id.strip() and _keys(request, patient_id.strip()):
            pid = patient_id.strip()
        if pid is None:
            raise NoPatient("No such patient.")
    except NoPatient as exc:
        return _done(request, str(exc), status=404, error=True)
    return RedirectResponse(f"/privacy/patients/{pid}", status_code=303)


@router.get("/privacy/patients/{patient_id}")
def patient(request: Request, patient_id: str, viewer: Annotated[a.Viewer, a.need(a.PRIVACY)]) -> Response:
    keys = _keys(request, patient_id)
    if not keys:
        raise HTTPException(404, "no such patient")
    supps: list[dict[str, Any]] = []
    auths: list[dict[str, Any]] = []
    consents: list[dict[str, Any]] = []
    disclosures: list[dict[str, Any]] = []
    with unit(_engine(request)) as u:
        for k in keys:
            supps += [api.suppression_json(r) for r in q.suppressions(u, patient_key=k, active=False, limit=1000)]
            auths += [api.authorization_json(r) for r in q.authorizations_of(u, k)]
            consents += [{"id": c.id, "fhir_id": c.fhir_id, "status": c.status, "source": c.source,
                          "received_at": api.iso(c.received_at)} for c in q.consents_of(u, k)]
    for k in keys:
        disclosures += audit.disclosures_for(_engine(request), k)
    for x in supps + auths + disclosures:
        x.pop("patient_key", None)
    disclosures.sort(key=lambda d: (d["sent_at"], d["id"]))
    return render(request, "privacy_patient.html", {
        "patient_id": patient_id, "suppressions": sorted(supps, key=lambda s: -s["id"]), "authorizations": auths,
        "consents": consents, "disclosures": disclosures, "can_act": viewer.can(a.PRIVACY_ACT), "sources": SOURCES,
    })


@router.get("/privacy/patients/{patient_id}/disclosures.csv")
def export(request: Request, patient_id: str, viewer: Annotated[a.Viewer, a.need(a.PRIVACY)]) -> Response:
    """The patient's disclosure audit as CSV (the API's ``to_csv``), the patient column carrying the
    internal id rather than the MRN-derived key; audited as an export."""
    keys = _keys(request, patient_id)
    if not keys:
        raise HTTPException(404, "no such patient")
    rows = [r for k in keys for r in audit.disclosures_for(_engine(request), k)]
    rows.sort(key=lambda d: (d["sent_at"], d["id"]))
    for r in rows:
        r["patient_key"] = patient_id
    audit_action(request, viewer, "disclosures.export", target_kind="patient", target_id=pseudonym(request, keys[0]),
                 detail={"patient_id": patient_id, "rows": len(rows), "format": "csv"})
    return PlainTextResponse(audit.to_csv(rows), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="disclosures-{patient_id}.csv"'})


@router.post("/privacy/suppressions")
def suppression_add(request: Request, viewer: Annotated[a.Viewer, a.need(a.PRIVACY_ACT)],
                    patient_id: str = Form("", max_length=40), patient_key: str = Form("", max_length=300),
                    destination: str = Form(""), purpose: str = Form(""), category: str = Form("opt-out"),
                    source: str = Form("operator"), reason: str = Form("", max_length=500)) -> Response:
    """Record an opt-out (``SuppressionIn`` validation, the API's write)."""
    try:
        key, pid = _resolve(request, patient_id, patient_key)
        body = api.SuppressionIn(patient_key=key, destination=destination.strip() or None, purpose=purpose.strip() or None,
                                 reason=category.strip() or "opt-out", source=source)
    except (NoPatient, ValidationError) as exc:
        audit_action(request, viewer, "suppression.add", target_kind="patient", reason=reason, outcome="refused")
        return _done(request, str(exc).splitlines()[0], status=422, error=True)
    row = api.add_suppression(_engine(request), body)
    audit_action(request, viewer, "suppression.add", target_kind="patient", target_id=pseudonym(request, key), reason=reason,
                 detail={"suppression_id": row.id, "patient_id": pid, "destination": body.destination,
                         "purpose": body.purpose, "source": body.source})
    request.app.state.runtime.wake_deliver.set()
    return _done(request, f"Suppression #{row.id} added.", pid)


@router.post("/privacy/suppressions/{suppression_id}/revoke")
def suppression_revoke(request: Request, suppression_id: int, viewer: Annotated[a.Viewer, a.need(a.PRIVACY_ACT)],
                       reason: str = Form("", max_length=500)) -> Response:
    return _revoked(request, viewer, "suppression", suppression_id, api.revoke_suppression(_engine(request), suppression_id), reason)


@router.post("/privacy/authorizations")
def authorization_add(request: Request, viewer: Annotated[a.Viewer, a.need(a.PRIVACY_ACT)],
                      patient_id: str = Form("", max_length=40), patient_key: str = Form("", max_length=300),
                      purpose: str = Form("marketing"), reference: str = Form(""), reason: str = Form("", max_length=500)) -> Response:
    try:
        key, pid = _resolve(request, patient_id, patient_key)
        body = api.AuthorizationIn(patient_key=key, purpose=purpose.strip() or "marketing", reference=reference.strip() or None)
    except (NoPatient, ValidationError) as exc:
        audit_action(request, viewer, "authorization.add", target_kind="patient", reason=reason, outcome="refused")
        return _done(request, str(exc).splitlines()[0], status=422, error=True)
    row = api.add_authorization(_engine(request), body)
    audit_action(request, viewer, "authorization.add", target_kind="patient", target_id=pseudonym(request, key),
                 reason=reason, detail={"authorization_id": row.id, "purpose": row.purpose, "patient_id": pid})
    return _done(request, f"Authorization #{row.id} recorded.", pid)


@router.post("/privacy/authorizations/{authorization_id}/revoke")
def authorization_revoke(request: Request, authorization_id: int, viewer: Annotated[a.Viewer, a.need(a.PRIVACY_ACT)],
                         reason: str = Form("", max_length=500)) -> Response:
    row = api.revoke_authorization(_engine(request), authorization_id)
    return _revoked(request, viewer, "authorization", authorization_id, row, reason, **({"purpose": row.purpose} if row else {}))


def _revoked(request: Request, viewer: a.Viewer, kind: str, target_id: int, row: Any, reason: str, **detail: Any) -> Response:
    """Audit and answer the revocation of a suppression or an authorization (``row``: the revoked
    record, ``None`` when there is none by that id)."""
    if row is None:
        audit_action(request, viewer, f"{kind}.revoke", target_kind=kind, target_id=target_id,
                     reason=reason, outcome="refused", detail={"status": 404})
        return _done(request, f"No such {kind}.", status=404, error=True)
    pid = _ids(request, [row.patient_key]).get(row.patient_key)
    audit_action(request, viewer, f"{kind}.revoke", target_kind=kind, target_id=target_id, reason=reason,
                 detail={"patient": pseudonym(request, row.patient_key), **detail, "patient_id": pid})
    return _done(request, f"{kind.capitalize()} #{target_id} revoked.", pid)


def _consent_resource(status: str, provision: str) -> dict[str, Any]:
    """A minimal R4B privacy Consent (scope patient-privacy, LOINC 59284-0) with one provision."""
    return {"resourceType": "Consent", "id": "careloop-" + secrets.token_hex(8), "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "provision": {"type": provision}}


@router.post("/privacy/consents")
def consent_add(request: Request, viewer: Annotated[a.Viewer, a.need(a.PRIVACY_ACT)],
                patient_id: str = Form("", max_length=40), patient_key: str = Form("", max_length=300),
                provision: str = Form("deny"), reason: str = Form("", max_length=500)) -> Response:
    """Store a privacy Consent (validated as R4B by the API's check) with a permit or deny provision."""
    resource = _consent_resource("active", provision if provision in ("deny", "permit") else "deny")
    try:
        key, pid = _resolve(request, patient_id, patient_key)
        api.validate_consent(resource)
        row = api.store_consent(_engine(request), resource, key)
    except (NoPatient, HTTPException) as exc:
        audit_action(request, viewer, "consent.add", target_kind="patient", reason=reason, outcome="refused")
        return _done(request, str(getattr(exc, "detail", exc)), status=422, error=True)
    audit_action(request, viewer, "consent.add", target_kind="patient", target_id=pseudonym(request, key), reason=reason,
                 detail={**api.consent_detail(row.status, row.fhir_id), "consent_row": row.id, "patient_id": pid})
    return _done(request, f"Consent #{row.id} stored ({provision}).", pid)


@router.post("/privacy/consents/{consent_id}/revoke")
def consent_revoke(request: Request, consent_id: int, viewer: Annotated[a.Viewer, a.need(a.PRIVACY_ACT)],
                   reason: str = Form("", max_length=500)) -> Response:
    """Revoke a Consent: the stored resource again with ``status: inactive`` (as the API records a
    revocation: a Consent with the same id replaces the earlier one)."""
    with unit(_engine(request)) as u:
        row = q.consent(u, consent_id)
    if row is None or not row.fhir_id:
        return _done(request, "No such consent, or it has no FHIR id (post an inactive Consent through the API).",
                     status=404 if row is None else 422, error=True)
    resource = {**orjson.loads(row.resource), "id": row.fhir_id, "status": "inactive"}
    api.validate_consent(resource)
    stored = api.store_consent(_engine(request), resource, row.patient_key)
    pid = _ids(request, [row.patient_key]).get(row.patient_key)
    audit_action(request, viewer, "consent.add", target_kind="patient", target_id=pseudonym(request, row.patient_key),
                 reason=reason, detail={**api.consent_detail("inactive", row.fhir_id), "consent_row": stored.id,
                                        "patient_id": pid})
    return _done(request, f"Consent #{consent_id} revoked.", pid)
