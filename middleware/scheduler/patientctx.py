"""What the stored data says about a patient, for suppression: hospice care and death.

Read at evaluation time (``changes.on_event``) and again at send time
(``scheduler.runner``), so a death or hospice admission recorded after a trigger was
scheduled still stops it.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import orjson
from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session

from ..rules.load import RuleSet
from ..rules.suppress import hospice_reason, is_deceased
from ..storage.rawsql import Raw
from ..storage.tables import PatientRow, ResourceState


def hospice_for(session: Session, patient_key: str | None, rs: RuleSet) -> str | None:
    """Why the patient is in hospice care according to the stored resources, or None."""
    s = rs.settings
    if not patient_key or not s.suppress_hospice or s.hospice_valueset not in rs.valuesets.sets:
        return None
    rows = Raw(session).all(  # per processed event: plain SQL, no ORM statement to build
        "SELECT resource FROM resource_state WHERE patient_key = ? AND resource_type IN ('Encounter', 'CarePlan') "
        "AND deleted = ?", (patient_key, False))
    return hospice_reason((orjson.loads(r[0]) for r in rows), rs.valuesets, s.hospice_valueset)


# -- batched, for the scheduler: one query per check for all the patients of a claimed batch --

_P = PatientRow.__table__  # type: ignore[attr-defined]
_RS = ResourceState.__table__  # type: ignore[attr-defined]
_PATIENTS = sa_select(_P.c.key, _P.c.resource).where(_P.c.key.in_(bindparam("pks", expanding=True)))
_CARE = sa_select(_RS.c.patient_key, _RS.c.resource).where(
    _RS.c.patient_key.in_(bindparam("pks", expanding=True)),
    _RS.c.resource_type.in_(("Encounter", "CarePlan")),
    _RS.c.deleted == False,  # noqa: E712
)
#: patient keys per IN list (well under SQLite's bound-parameter limit whatever the batch size)
CHUNK = 500


def chunks(keys: Sequence[str], n: int = CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(keys), n):
        yield list(keys[i:i + n])


def suppressions_at_send(session: Session, patient_keys: Iterable[str], rs: RuleSet) -> dict[str, str]:
    """Deceased or hospice reasons for triggers about to fire: ``{patient_key: reason}`` for the
    keys that have one, with one query for the patients and one for their Encounters/CarePlans
    per chunk of keys."""
    keys = sorted({k for k in patient_keys if k})
    out: dict[str, str] = {}
    if not keys:
        return out
    conn = session.connection()
    for part in chunks(keys):
        for key, resource in conn.execute(_PATIENTS, {"pks": part}):
            if is_deceased(orjson.loads(resource)):
                out[key] = "patient is deceased"
    s = rs.settings
    if not s.suppress_hospice or s.hospice_valueset not in rs.valuesets.sets:
        return out
    rest = [k for k in keys if k not in out]
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for part in chunks(rest):
        for key, resource in conn.execute(_CARE, {"pks": part}):
            by_patient.setdefault(key, []).append(orjson.loads(resource))
    for key, resources in by_patient.items():
        reason = hospice_reason(resources, rs.valuesets, s.hospice_valueset)
        if reason:
            out[key] = f"hospice: {reason}"
    return out
