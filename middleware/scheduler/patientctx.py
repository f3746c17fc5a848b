"""What the stored data says about a patient, for suppression: hospice care and death.

Read at evaluation time (``changes.on_event``) and again at send time
(``scheduler.runner``), so a death or hospice admission recorded after a trigger was
scheduled still stops it.
"""
from __future__ import annotations

from typing import Any

import orjson
from sqlmodel import Session, select

from ..rules.load import RuleSet
from ..rules.suppress import hospice_reason, is_deceased
from ..storage.tables import PatientRow, ResourceState


def hospice_for(session: Session, patient_key: str | None, rs: RuleSet) -> str | None:
    """Why the patient is in hospice care according to the stored resources, or None."""
    s = rs.settings
    if not patient_key or not s.suppress_hospice or s.hospice_valueset not in rs.valuesets.sets:
        return None
    rows = session.exec(
        select(ResourceState.resource).where(
            ResourceState.patient_key == patient_key,
            ResourceState.resource_type.in_(("Encounter", "CarePlan")),  # type: ignore[attr-defined]
            ResourceState.deleted == False,  # noqa: E712
        )
    ).all()
    return hospice_reason((orjson.loads(r) for r in rows), rs.valuesets, s.hospice_valueset)


def suppression_at_send(session: Session, patient_key: str | None, rs: RuleSet) -> str | None:
    """Deceased or hospice reason for a trigger about to fire, or None."""
    if not patient_key:
        return None
    row = session.get(PatientRow, patient_key)
    patient: dict[str, Any] | None = orjson.loads(row.resource) if row else None
    if is_deceased(patient):
        return "patient is deceased"
    reason = hospice_for(session, patient_key, rs)
    return f"hospice: {reason}" if reason else None
