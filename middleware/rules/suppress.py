"""Suppression facts derived from the data (pure): deceased, hospice, patient age.

Hospice is read from what the feeds say, through the value set named by
``settings.hospice_valueset`` (default ``hospice``): a finished encounter discharged
to hospice (v2-0112 50/51), an active encounter whose type is hospice care, or an
active CarePlan whose category or code is hospice care.
"""
from __future__ import annotations

from datetime import date, datetime
from typing import Any, Iterable

from .fhirpath import ValueSets


def is_deceased(patient: dict[str, Any] | None) -> bool:
    """PID-30 ``Y`` / ``deceasedBoolean`` true, or any ``deceasedDateTime``."""
    if not patient:
        return False
    return patient.get("deceasedBoolean") is True or bool(patient.get("deceasedDateTime"))


def age_in_years(birth_date: str | None, on: date) -> int | None:
    """Whole years from a FHIR ``birthDate`` (YYYY, YYYY-MM or YYYY-MM-DD) to ``on``."""
    if not birth_date or len(birth_date) < 4:
        return None
    try:
        y = int(birth_date[:4])
        m = int(birth_date[5:7]) if len(birth_date) >= 7 else 1
        d = int(birth_date[8:10]) if len(birth_date) >= 10 else 1
    except ValueError:
        return None
    return on.year - y - ((on.month, on.day) < (m, d))


def hospice_reason(resources: Iterable[dict[str, Any]], vs: ValueSets, name: str) -> str | None:
    """Why the data says the patient is in hospice care, or None."""
    if name not in vs.sets:
        return None
    for r in resources:
        rtype, status = r.get("resourceType"), r.get("status")
        if rtype == "Encounter":
            disp = (r.get("hospitalization") or {}).get("dischargeDisposition")
            if disp and status == "finished" and vs.member(disp, name):
                return "discharged to hospice"
            if status in ("arrived", "in-progress", "onleave") and vs.member(r.get("type") or [], name):
                return "active hospice encounter"
        elif rtype == "CarePlan" and status == "active":
            if vs.member((r.get("category") or []), name) or vs.member(r.get("code") or [], name):
                return "active hospice care plan"
    return None


def local_date(now: datetime) -> date:
    return now.date()
