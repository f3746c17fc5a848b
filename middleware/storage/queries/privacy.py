"""The privacy reads (``storage/privacy.py`` explains the merge semantics): the keys of a patient
across merges, active opt-outs, marketing authorizations and FHIR Consents, stored Patients and
current Encounters/CarePlans, each for a list of patient keys bound as ONE parameter."""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Integer, String, cast, false, insert, or_, select, union, union_all, update

from ..sql import UnitOfWork, any_of, param, query
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


# -- the records themselves (the privacy API): consents, suppressions, authorizations --------


class ConsentRow(NamedTuple):
    id: int
    patient_key: str
    fhir_id: str | None
    status: str
    source: str
    received_at: float
    resource: str


class SuppressionRow(NamedTuple):
    id: int
    patient_key: str
    destination: str | None
    purpose: str | None
    reason: str
    source: str | None
    created_at: float
    revoked_at: float | None


class AuthorizationRow(NamedTuple):
    id: int
    patient_key: str
    purpose: str
    reference: str | None
    granted_at: float
    revoked_at: float | None


def _cols(table: Any, row: type[Any]) -> list[Any]:
    return [table.c[name] for name in row._fields]


_CONSENT_WRITE = ("patient_key", "fhir_id", "status", "resource", "updated_at")

query("privacy.patient_by_fhir_id", select(_P.key).where(_P.fhir_id == param("fhir_id")).limit(1))
query("privacy.consent_by_fhir_id", select(_C.id).where(_C.fhir_id == param("fhir_id")).order_by(_C.id).limit(1))
query("privacy.consent_add", insert(CONSENT).values({c: param(c) for c in (*_CONSENT_WRITE, "received_at")})
      .returning(_C.id))
query("privacy.consent_update", update(CONSENT).where(_C.id == param("p_id"))
      .values({c: param("p_" + c) for c in _CONSENT_WRITE}))
query("privacy.consent", select(*_cols(CONSENT, ConsentRow)).where(_C.id == param("id")), ConsentRow)
query("privacy.consents_of", select(*_cols(CONSENT, ConsentRow)).where(_C.patient_key == param("patient_key"))
      .order_by(_C.id), ConsentRow)
query("privacy.suppressions",
      select(*_cols(SUPPRESSION, SuppressionRow))
      .where(or_(cast(param("patient_key"), String).is_(None), _S.patient_key == param("patient_key")),
             or_(param("active") == false(), _S.revoked_at.is_(None)),
             or_(cast(param("before_id"), Integer).is_(None), _S.id < param("before_id")))
      .order_by(_S.id.desc()).limit(param("limit")), SuppressionRow)
query("privacy.suppression_add", insert(SUPPRESSION).values(
    {c: param(c) for c in ("patient_key", "destination", "purpose", "reason", "source", "created_at")}).returning(_S.id))
query("privacy.suppression", select(*_cols(SUPPRESSION, SuppressionRow)).where(_S.id == param("id")), SuppressionRow)
query("privacy.suppression_revoke", update(SUPPRESSION).where(_S.id == param("id"), _S.revoked_at.is_(None))
      .values(revoked_at=param("now")))
query("privacy.authorizations_of", select(*_cols(AUTHORIZATION, AuthorizationRow))
      .where(_A.patient_key == param("patient_key")).order_by(_A.id), AuthorizationRow)
query("privacy.authorization_add", insert(AUTHORIZATION).values(
    {c: param(c) for c in ("patient_key", "purpose", "reference", "granted_at")}).returning(_A.id))
query("privacy.authorization", select(*_cols(AUTHORIZATION, AuthorizationRow)).where(_A.id == param("id")),
      AuthorizationRow)
query("privacy.authorization_revoke", update(AUTHORIZATION).where(_A.id == param("id"), _A.revoked_at.is_(None))
      .values(revoked_at=param("now")))


def patient_by_fhir_id(u: UnitOfWork, fhir_id: str) -> str | None:
    key: str | None = u.scalar("privacy.patient_by_fhir_id", fhir_id=fhir_id)
    return key


def put_consent(u: UnitOfWork, *, patient_key: str, fhir_id: str | None, status: str, resource: str,
                now: float) -> ConsentRow:
    """Store a Consent; one with the same FHIR id replaces the earlier one (its row keeps its id)."""
    existing = u.scalar("privacy.consent_by_fhir_id", fhir_id=fhir_id) if fhir_id else None
    values = {"patient_key": patient_key, "fhir_id": fhir_id, "status": status, "resource": resource, "updated_at": now}
    if existing is None:
        existing = u.scalar("privacy.consent_add", **values, received_at=now)
    else:
        u.run("privacy.consent_update", p_id=existing, **{"p_" + k: v for k, v in values.items()})
    row: ConsentRow = u.one("privacy.consent", id=existing)
    return row


def consents_of(u: UnitOfWork, patient_key: str) -> list[ConsentRow]:
    rows: list[ConsentRow] = u.all("privacy.consents_of", patient_key=patient_key)
    return rows


def suppressions(u: UnitOfWork, *, patient_key: str | None, active: bool, limit: int,
                 before_id: int | None = None) -> list[SuppressionRow]:
    """Newest first; ``before_id`` continues a keyset page."""
    rows: list[SuppressionRow] = u.all("privacy.suppressions", patient_key=patient_key, active=active, limit=limit,
                                       before_id=before_id)
    return rows


def add_suppression(u: UnitOfWork, **values: Any) -> SuppressionRow:
    """``values``: patient_key, destination, purpose, reason, source, created_at."""
    row: SuppressionRow = u.one("privacy.suppression", id=u.scalar("privacy.suppression_add", **values))
    return row


def revoke_suppression(u: UnitOfWork, suppression_id: int, now: float) -> SuppressionRow | None:
    """Mark revoked at ``now`` unless already revoked (idempotent); None when there is no such row."""
    u.run("privacy.suppression_revoke", id=suppression_id, now=now)
    row: SuppressionRow | None = u.one("privacy.suppression", id=suppression_id)
    return row


def authorizations_of(u: UnitOfWork, patient_key: str) -> list[AuthorizationRow]:
    rows: list[AuthorizationRow] = u.all("privacy.authorizations_of", patient_key=patient_key)
    return rows


def add_authorization(u: UnitOfWork, **values: Any) -> AuthorizationRow:
    """``values``: patient_key, purpose, reference, granted_at."""
    row: AuthorizationRow = u.one("privacy.authorization", id=u.scalar("privacy.authorization_add", **values))
    return row


def revoke_authorization(u: UnitOfWork, authorization_id: int, now: float) -> AuthorizationRow | None:
    u.run("privacy.authorization_revoke", id=authorization_id, now=now)
    row: AuthorizationRow | None = u.one("privacy.authorization", id=authorization_id)
    return row


def consent(u: UnitOfWork, consent_id: int) -> ConsentRow | None:
    row: ConsentRow | None = u.one("privacy.consent", id=consent_id)
    return row
