"""``/patients``: find a patient and read their timeline, pseudonymously; reveal identifiers with a reason.

* ``GET /patients``: find by careloop's internal id (``pt_...``) or a contact key (``ck_...``) --
  both pseudonymous, so a GET is fine -- and the recently active patients (keyset on the event id).
* ``POST /patients/find``: find by MRN. The MRN travels in a form body only, never in a URL or a
  log line, and the answer is a redirect to ``/patients/{pt_id}``.
* ``GET /patients/{pt_id}``: the timeline (``api.patients.timeline``, the function the API serves);
  a merged-away id redirects to its survivor.
* ``POST /patients/{pt_id}/reveal``: permission ``reveal``, a reason required: the identifiers
  (MRNs with their assigning authority, names) are shown in that response only, and the reveal
  is written to the admin audit (``console.reveal``, target ``patient`` / the ``pt_`` id, reason);
  an attempt without the permission is refused and audited as ``refused``.
"""
from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ...api import patients as api
from ...delivery.admin_audit import record
from ...keyring import contact_keyring
from .. import access as a
from ..web import render

router = APIRouter()

#: what the GET search box accepts (anything else might be an identifier: it must not be in a URL)
PSEUDONYM = re.compile(r"(pt_[a-z2-7]{26}|ck_[0-9a-f]{40})")
MIN_REASON = 4
MAX_REASON = 200  # the admin audit's reason column


def _rt(request: Request) -> Any:
    return request.app.state.runtime


@router.get("/patients")
def patients(request: Request, viewer: Annotated[a.Viewer, a.need(a.TIMELINE)], q: str | None = None,
             before: int | None = None) -> Response:
    rt = _rt(request)
    error = None
    if q:
        q = q.strip()
        found = None
        if not PSEUDONYM.fullmatch(q):
            error = "Enter an internal patient id (pt_...) or a contact key (ck_...). Find by MRN with the form below."
        elif q.startswith("pt_"):
            found = api.survivor_of(rt.engine, q)
        else:
            found = api.find_by_contact_key(rt.engine, contact_keyring(rt.settings), q)
        if found:
            return RedirectResponse(f"/patients/{found}", status_code=303)
        error = error or "No patient has this id or contact key."
    recent, next_before = api.recent_patients(rt.engine, before=before, limit=50)
    return render(request, "patients.html", {"recent": recent, "next_before": next_before, "error": error,
                                             "q": q if q and PSEUDONYM.fullmatch(q) else ""},
                  status=404 if error and q and PSEUDONYM.fullmatch(q) else (400 if error else 200))


@router.post("/patients/find")
def find_by_mrn(request: Request, viewer: Annotated[a.Viewer, a.need(a.TIMELINE)],
                mrn: Annotated[str, Form()] = "", authority: Annotated[str, Form()] = "") -> Response:
    """Find by MRN (a POST: the MRN never reaches a URL); one patient -> a redirect to their timeline.

    Lengths are checked here, not by the form's validation: a 422 would echo the value back."""
    rt = _rt(request)
    usable = 0 < len(mrn.strip()) <= 100 and len(authority) <= 200
    ids = api.find_by_mrn(rt.engine, rt.sources, mrn, authority or None) if usable else []
    if len(ids) == 1:
        return RedirectResponse(f"/patients/{ids[0]}", status_code=303)
    recent, next_before = api.recent_patients(rt.engine, limit=50)
    return render(request, "patients.html", {
        "recent": recent, "next_before": next_before, "q": "", "matches": ids,
        "mrn_error": None if ids else "No patient has this MRN (for this assigning authority)."},
        status=200 if ids else 404)


def _timeline_page(request: Request, viewer: a.Viewer, pt_id: str, cursor: str | None,
                   revealed: api.Identifiers | None = None, reveal_error: str | None = None) -> Response:
    rt = _rt(request)
    try:
        tl = api.timeline(rt.engine, pt_id, cursor)
    except ValueError:
        return render(request, "patient.html", {"tl": None, "pt_id": "", "error": "That page link is not valid."},
                      status=400)
    if tl is None:  # the id is not echoed unless it has the shape of one (a URL may carry anything)
        shown = pt_id if api.PATIENT_ID.fullmatch(pt_id) else ""
        return render(request, "patient.html", {"tl": None, "pt_id": shown, "error": "No patient has this id."},
                      status=404)
    if tl.patient_id != pt_id and revealed is None:
        return RedirectResponse(f"/patients/{tl.patient_id}", status_code=303)
    return render(request, "patient.html", {"tl": tl, "pt_id": tl.patient_id, "cursor": cursor, "revealed": revealed,
                                            "reveal_error": reveal_error, "can_reveal": viewer.can(a.REVEAL)},
                  status=400 if reveal_error else 200)


@router.get("/patients/{pt_id}")
def patient(request: Request, viewer: Annotated[a.Viewer, a.need(a.TIMELINE)], pt_id: str,
            cursor: str | None = None) -> Response:
    return _timeline_page(request, viewer, pt_id, cursor)


@router.post("/patients/{pt_id}/reveal")
def reveal(request: Request, viewer: Annotated[a.Viewer, a.need(a.TIMELINE)], pt_id: str,
           reason: Annotated[str, Form()] = "") -> Response:
    """Show the patient's identifiers in this response only; audited with the reason.

    A viewer without ``reveal`` is refused (403) and the attempt is audited too (``refused``)."""
    rt = _rt(request)
    reason = " ".join(reason.split())
    if not viewer.can(a.REVEAL):
        record(rt.engine, actor=viewer.name, role=viewer.role_label, channel="console", action="console.reveal",
               outcome="refused", target_kind="patient", target_id=pt_id if api.PATIENT_ID.fullmatch(pt_id) else None,
               reason=reason[:MAX_REASON] or None, client=request.client.host if request.client else None)
        raise a.Forbidden(viewer, a.REVEAL)
    if len(reason) < MIN_REASON:
        return _timeline_page(request, viewer, pt_id, None, reveal_error="A reveal needs a reason (at least a few words).")
    if len(reason) > MAX_REASON:
        return _timeline_page(request, viewer, pt_id, None, reveal_error=f"Keep the reason under {MAX_REASON} characters.")
    ids = api.identifiers(rt.engine, rt.sources, pt_id)
    if ids is None:
        return _timeline_page(request, viewer, pt_id, None)
    record(rt.engine, actor=viewer.name, role=viewer.role_label, channel="console", action="console.reveal",
           target_kind="patient", target_id=ids.patient_id, reason=reason,
           client=request.client.host if request.client else None,
           detail={"identifiers": len(ids.identifiers), "names": len(ids.names)})
    return _timeline_page(request, viewer, ids.patient_id, None, revealed=ids)
