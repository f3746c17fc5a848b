"""Send-time checks: may this trigger go to this destination *now*?

:func:`send_time_block` re-reads everything that can change between the trigger
firing and the send (cancellation, BAA, purpose, opt-outs, marketing authorization,
FHIR Consent) and returns ``(status, reason)`` to record on the delivery, or ``None``
to send. Opt-outs and consents recorded under a patient key that was later merged
into this one (ADT^A40) count too. Reasons carry ids and categories, never PHI.
"""
from __future__ import annotations

from datetime import datetime

import orjson
from sqlmodel import Session, col, select

from ..config.destinations import Destination
from ..storage.tables import Authorization, ConsentRecord, PatientRow, Suppression, TriggerRow
from .consent import consent_denies


def patient_keys(s: Session, patient_key: str) -> list[str]:
    """``patient_key`` plus every key merged into it (one level of ADT^A40 merges)."""
    merged = s.exec(select(PatientRow.key).where(PatientRow.merged_into == patient_key)).all()
    return [patient_key, *merged]


def opt_out_reason(s: Session, keys: list[str], destination: str, purpose: str) -> str | None:
    """The active suppression covering this destination and purpose, as a reason, or None."""
    rows = s.exec(
        select(Suppression).where(col(Suppression.patient_key).in_(keys), col(Suppression.revoked_at).is_(None))
    ).all()
    for r in rows:
        if r.destination in (None, destination) and r.purpose in (None, purpose):
            scope = f"destination {r.destination}" if r.destination else "all destinations"
            return f"opt-out (suppression {r.id}, {r.source or 'recorded'}; {scope}): {r.reason}"
    return None


def has_authorization(s: Session, keys: list[str], purpose: str = "marketing") -> bool:
    row = s.exec(
        select(Authorization.id).where(
            col(Authorization.patient_key).in_(keys), Authorization.purpose == purpose,
            col(Authorization.revoked_at).is_(None),
        )
    ).first()
    return row is not None


def consent_reason(s: Session, keys: list[str], destination: str, purpose: str, at: datetime) -> str | None:
    rows = s.exec(
        select(ConsentRecord.resource).where(col(ConsentRecord.patient_key).in_(keys), ConsentRecord.status == "active")
    ).all()
    return consent_denies((orjson.loads(r) for r in rows), purpose=purpose, destination=destination, at=at)


def send_time_block(s: Session, t: TriggerRow, dest: Destination, at: datetime) -> tuple[str, str] | None:
    """``(status, reason)`` when the delivery must not be sent now, else None (see module docstring)."""
    if t.status == "cancelled":
        return "suppressed", "trigger was cancelled"
    if t.patient_key and not dest.baa:
        return "suppressed", (f"destination {dest.name} has no business associate agreement; "
                              "patient-level triggers are refused at send time")
    if t.purpose not in dest.policy.purposes:
        return "suppressed", f"destination policy does not allow purpose {t.purpose}"
    if not t.patient_key:
        return None
    keys = patient_keys(s, t.patient_key)
    reason = opt_out_reason(s, keys, dest.name, t.purpose)
    if reason:
        return "suppressed", reason
    if t.purpose == "marketing" and not has_authorization(s, keys):
        return "suppressed", "marketing requires a recorded authorization for this patient (none active at send time)"
    reason = consent_reason(s, keys, dest.name, t.purpose, at)
    if reason:
        return "suppressed", reason
    return None
