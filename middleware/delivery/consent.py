"""FHIR Consent records: which patient a Consent names (:func:`consent_patient_ref`).

The evaluation of a patient's Consents for one disclosure, :func:`consent_denies`, lives in
:mod:`middleware.storage.privacy` (pure) with the other privacy checks, so the scheduler
(fire time) and the delivery gate (send time) share one definition; it is re-exported here.
"""
from __future__ import annotations

from typing import Any

from ..storage.privacy import PURPOSE_CODES, consent_denies

__all__ = ["PURPOSE_CODES", "consent_denies", "consent_patient_ref"]


def consent_patient_ref(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """(``system|value`` patient key from an identifier reference, FHIR Patient id) of a Consent."""
    ref = resource.get("patient") or {}
    ident = ref.get("identifier") or {}
    key = f"{ident['system']}|{ident['value']}" if ident.get("system") and ident.get("value") else None
    r = ref.get("reference") or ""
    pid = r.split("/", 1)[1] if r.startswith("Patient/") else None
    return key, pid
