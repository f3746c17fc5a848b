"""FHIR Consent evaluation for one disclosure (pure).

``consent_denies(consents, purpose=..., destination=..., at=...)`` returns the reason
a set of the patient's Consent resources (FHIR R4/R4B JSON) forbids sending a
trigger of ``purpose`` to ``destination`` at time ``at``, or ``None``.

Rules (most restrictive wins across several Consents):

* Only ``status: active`` Consents count; a ``provision.period`` outside ``at``
  makes a provision inapplicable.
* A provision *matches* when each of its constraints that is present matches:
  ``purpose`` (a Coding whose ``code`` is our purpose name, or the v3-ActReason
  code mapped from it — see :data:`PURPOSE_CODES`) and ``actor`` (a reference
  ``Organization/<destination>``, an identifier value or display equal to the
  destination name). A provision with neither constraint matches everything.
* Root ``type: deny`` that matches → denied, unless a nested ``permit``
  provision matches (an exception). Root ``permit`` → denied when a nested
  ``deny`` provision matches. Nested provisions are searched recursively.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

#: Our purpose names → HL7 v3 ActReason codes that express the same purpose of use.
PURPOSE_CODES: dict[str, frozenset[str]] = {
    "marketing": frozenset({"marketing", "HMARKT", "MARKT"}),
    "treatment-reminder": frozenset({"treatment-reminder", "TREAT", "PATADMIN"}),
    "care-coordination": frozenset({"care-coordination", "CAREMGT", "TREAT", "HOPERAT"}),
}


def _parse_dt(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else None


def _in_period(prov: dict[str, Any], at: datetime) -> bool:
    period = prov.get("period") or {}
    start, end = _parse_dt(period.get("start")), _parse_dt(period.get("end"))
    return (start is None or start <= at) and (end is None or at <= end)


def _purpose_matches(prov: dict[str, Any], purpose: str) -> bool | None:
    codes = prov.get("purpose") or []
    if not codes:
        return None
    wanted = PURPOSE_CODES.get(purpose, frozenset({purpose}))
    return any(isinstance(c, dict) and c.get("code") in wanted for c in codes)


def _actor_matches(prov: dict[str, Any], destination: str) -> bool | None:
    actors = prov.get("actor") or []
    if not actors:
        return None
    for a in actors:
        ref = (a or {}).get("reference") or {}
        if ref.get("reference") in (f"Organization/{destination}", f"Device/{destination}", destination):
            return True
        if (ref.get("identifier") or {}).get("value") == destination or ref.get("display") == destination:
            return True
    return False


def _matches(prov: dict[str, Any], purpose: str, destination: str, at: datetime) -> bool:
    if not _in_period(prov, at):
        return False
    checks = [_purpose_matches(prov, purpose), _actor_matches(prov, destination)]
    return all(c is not False for c in checks)


def _nested_match(prov: dict[str, Any], kind: str, purpose: str, destination: str, at: datetime) -> dict[str, Any] | None:
    for sub in prov.get("provision") or []:
        if not isinstance(sub, dict):
            continue
        if sub.get("type") == kind and _matches(sub, purpose, destination, at):
            return sub
        deeper = _nested_match(sub, kind, purpose, destination, at)
        if deeper is not None:
            return deeper
    return None


def consent_denies(consents: Iterable[dict[str, Any]], *, purpose: str, destination: str, at: datetime) -> str | None:
    """The reason the patient's Consents forbid this disclosure, or ``None`` (see module docstring)."""
    for c in consents:
        if not isinstance(c, dict) or c.get("status") != "active":
            continue
        cid = c.get("id") or "(no id)"
        root = c.get("provision")
        if not isinstance(root, dict):
            continue
        rtype = root.get("type", "permit")
        if rtype == "deny" and _matches(root, purpose, destination, at):
            if _nested_match(root, "permit", purpose, destination, at) is None:
                return f"consent {cid}: deny provision for purpose {purpose} / destination {destination}"
        elif rtype == "permit":
            if _nested_match(root, "deny", purpose, destination, at) is not None:
                return f"consent {cid}: deny provision for purpose {purpose} / destination {destination}"
    return None


def consent_patient_ref(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """(``system|value`` patient key from an identifier reference, FHIR Patient id) of a Consent."""
    ref = resource.get("patient") or {}
    ident = ref.get("identifier") or {}
    key = f"{ident['system']}|{ident['value']}" if ident.get("system") and ident.get("value") else None
    r = ref.get("reference") or ""
    pid = r.split("/", 1)[1] if r.startswith("Patient/") else None
    return key, pid
