"""What the stored data says about a patient, for suppression: hospice care and death.

Read at evaluation time (``changes.on_event``) and again at send time
(``scheduler.runner``), so a death or hospice admission recorded after a trigger was
scheduled still stops it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import orjson
from ..rules.load import RuleSet
from ..rules.suppress import hospice_reason, is_deceased
from ..storage.privacy import chunks
from ..storage.queries import privacy as privacy_queries
from ..storage.queries.ingest import CARE_RESOURCES
from ..storage.sql import Query, UnitOfWork


def hospice_for(u: UnitOfWork, patient_key: str | None, rs: RuleSet) -> str | None:
    """Why the patient is in hospice care according to the stored resources, or None."""
    call = hospice_query(patient_key, rs)
    return hospice_from(u.all(call[0], **call[1]), rs) if call is not None else None


def hospice_query(patient_key: str | None, rs: RuleSet) -> tuple[Query, dict[str, Any]] | None:
    """The read :func:`hospice_for` makes (``None``: nothing to read), to send with other reads."""
    s = rs.settings
    if not patient_key or not s.suppress_hospice or s.hospice_valueset not in rs.valuesets.sets:
        return None
    return CARE_RESOURCES, {"patient_key": patient_key}


def hospice_from(rows: Sequence[Sequence[Any]], rs: RuleSet) -> str | None:
    """Why the patient is in hospice care according to ``rows`` (:func:`hospice_query`'s), or None."""
    return hospice_reason((orjson.loads(r[0]) for r in rows), rs.valuesets, rs.settings.hospice_valueset)


# -- batched, for the scheduler: one query per check for all the patients of a claimed batch --


def deceased_or_hospice(u: UnitOfWork, keys_of: Mapping[str, Sequence[str]], rs: RuleSet) -> dict[str, str]:
    """Deceased or hospice reasons for the triggers about to fire: ``{patient_key: reason}`` for
    the keys that have one. ``keys_of`` maps each key to every key of its patient
    (:func:`middleware.storage.privacy.patient_keys`): a record under any of them counts.
    One query for the patients and one for their Encounters/CarePlans per chunk of keys (named
    queries on the unit's cursor: through SQLAlchemy's Core execution the two cost ~0.1 ms of a
    scheduler call's ~0.5 ms, issue 16)."""
    merged = {pk: ks for pk, ks in keys_of.items() if len(ks) > 1}
    every = sorted({k for ks in merged.values() for k in ks}.union(keys_of)) if merged else list(keys_of)
    out: dict[str, str] = {}
    if not every:
        return out
    deceased: set[str] = set()
    for part in chunks(every):
        for key, resource in privacy_queries.patient_resources(u, part):
            if is_deceased(orjson.loads(resource)):
                deceased.add(key)
    for pk in deceased.intersection(keys_of):
        out[pk] = "patient is deceased"
    for pk, ks in merged.items():
        if pk not in out and not deceased.isdisjoint(ks):
            out[pk] = "patient is deceased"
    s = rs.settings
    if not s.suppress_hospice or s.hospice_valueset not in rs.valuesets.sets:
        return out
    by_key: dict[str, list[dict[str, Any]]] = {}
    for part in chunks([k for k in every if k not in out]):
        for key, resource in privacy_queries.care_resources(u, part):
            by_key.setdefault(key, []).append(orjson.loads(resource))
    if not by_key:
        return out
    for pk, ks in keys_of.items():
        resources = [r for k in ks for r in by_key.get(k, ())] if len(ks) > 1 else by_key.get(pk)
        reason = hospice_reason(resources, rs.valuesets, s.hospice_valueset) if resources and pk not in out else None
        if reason:
            out[pk] = f"hospice: {reason}"
    return out
