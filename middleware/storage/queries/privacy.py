"""The privacy reads (``storage/privacy.py`` explains the merge semantics): the keys of a patient
across merges, active opt-outs, marketing authorizations and FHIR Consents, stored Patients and
current Encounters/CarePlans, each for a list of patient keys bound as ONE parameter."""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import false, select, union, union_all

from ..sql import UnitOfWork, any_of, query
from ._tables import AUTHORIZATION, CONSENT, PATIENT, RESOURCE_STATE, SUPPRESSION

_P, _S, _A, _C, _RS = PATIENT.c, SUPPRESSION.c, AUTHORIZATION.c, CONSENT.c, RESOURCE_STATE.c


class KeyPair(NamedTuple):
    """A key of the batch and another key of the same patient (``patient_keys``), or a merge
    (``key`` merged into ``other``: ``merges_touching``)."""

    key: str
    other: str


class SuppressionRecord(NamedTuple):
    id: int
    patient_key: str
    destination: str | None
    purpose: str | None
    reason: str
    source: str | None


class ConsentJson(NamedTuple):
    id: int
    patient_key: str
    resource: str


class KeyResource(NamedTuple):
    key: str
    resource: str


# a key of the batch, whether stored as a patient or only named as a merge survivor
_seed = union(
    select(_P.key.label("origin"), _P.key.label("key")).where(any_of(_P.key, "pks")),
    select(_P.merged_into.label("origin"), _P.merged_into.label("key")).where(any_of(_P.merged_into, "pks")),
).subquery("seed")
_up = select(_seed.c.origin, _seed.c.key).cte("merged_up", recursive=True)  # the key, its survivor, ...
_up = _up.union(select(_up.c.origin, _P.merged_into).select_from(_up.join(PATIENT, _P.key == _up.c.key))
                .where(_P.merged_into.is_not(None)))
_down = select(_up.c.origin, _up.c.key).cte("merged_down", recursive=True)  # ... and all merged into those
_down = _down.union(select(_down.c.origin, _P.key).select_from(_down.join(PATIENT, _P.merged_into == _down.c.key)))

query("privacy.patient_keys", select(_down.c.origin, _down.c.key).where(_down.c.key != _down.c.origin), KeyPair)
query("privacy.merges_touching", union_all(
    select(_P.key, _P.merged_into).where(any_of(_P.merged_into, "pks")),
    select(_P.key, _P.merged_into).where(any_of(_P.key, "pks"), _P.merged_into.is_not(None)),
), KeyPair)
query("privacy.active_suppressions",
      select(_S.id, _S.patient_key, _S.destination, _S.purpose, _S.reason, _S.source)
      .where(any_of(_S.patient_key, "pks"), _S.revoked_at.is_(None)).order_by(_S.id), SuppressionRecord)
query("privacy.marketing_authorized",
      select(_A.patient_key).distinct().where(any_of(_A.patient_key, "pks"), _A.purpose == "marketing",
                                              _A.revoked_at.is_(None)))
query("privacy.active_consents",
      select(_C.id, _C.patient_key, _C.resource).where(any_of(_C.patient_key, "pks"), _C.status == "active")
      .order_by(_C.id), ConsentJson)
query("privacy.patient_resources", select(_P.key, _P.resource).where(any_of(_P.key, "pks")), KeyResource)
query("privacy.care_resources",
      select(_RS.patient_key, _RS.resource).where(any_of(_RS.patient_key, "pks"),
                                                  any_of(_RS.resource_type, "care_types"), _RS.deleted == false()),
      KeyResource)

#: the resource types the hospice check reads (``privacy.care_resources``)
CARE_TYPES = ("Encounter", "CarePlan")


def patient_resources(u: UnitOfWork, keys: list[str]) -> list[KeyResource]:
    """Stored Patient resources of ``keys`` (deceased check)."""
    rows: list[KeyResource] = u.all("privacy.patient_resources", pks=keys)
    return rows


def care_resources(u: UnitOfWork, keys: list[str]) -> list[KeyResource]:
    """Current (not deleted) Encounters and CarePlans of ``keys`` (hospice check)."""
    rows: list[KeyResource] = u.all("privacy.care_resources", pks=keys, care_types=list(CARE_TYPES))
    return rows
