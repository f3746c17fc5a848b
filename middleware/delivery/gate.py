"""Send-time checks: may this trigger go to this destination *now*?

:func:`send_time_block` re-reads everything that can change between the trigger
firing and the send (cancellation, BAA, purpose, opt-outs, marketing authorization,
FHIR Consent) and returns ``(status, reason)`` to record on the delivery, or ``None``
to send. Opt-outs and consents recorded under a patient key that was later merged
into this one (ADT^A40) count too. Reasons carry ids and categories, never PHI.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlmodel import Session, col, select

from ..config.destinations import Destination
from ..storage.tables import Authorization, ConsentRecord, PatientRow, Suppression, TriggerRow
from .consent import consent_denies


def _opt_out(rows: Iterable[Suppression], destination: str, purpose: str) -> str | None:
    for r in rows:
        if r.destination in (None, destination) and r.purpose in (None, purpose):
            scope = f"destination {r.destination}" if r.destination else "all destinations"
            return f"opt-out (suppression {r.id}, {r.source or 'recorded'}; {scope}): {r.reason}"
    return None


def _static_block(t: Any, dest: Destination) -> tuple[str, str] | None:
    """The checks that need no database read (cancellation, BAA, purpose)."""
    if t.status == "cancelled":
        return "suppressed", "trigger was cancelled"
    if t.patient_key and not dest.baa:
        return "suppressed", (f"destination {dest.name} has no business associate agreement; "
                              "patient-level triggers are refused at send time")
    if t.purpose not in dest.policy.purposes:
        return "suppressed", f"destination policy does not allow purpose {t.purpose}"
    return None


def send_time_blocks(s: Session, items: Sequence[tuple[Any, Destination]], at: datetime) -> list[tuple[str, str] | None]:
    """:func:`send_time_block` for many ``(trigger, destination)`` pairs with one read per table.

    Same checks in the same order as the single form; suppressions and consents are
    considered oldest first (by id). ``trigger`` is a :class:`TriggerRow` or any row
    with its ``status``, ``patient_key`` and ``purpose``.
    """
    out: list[tuple[str, str] | None] = [_static_block(t, dest) for t, dest in items]
    todo = [i for i, (t, _) in enumerate(items) if out[i] is None and t.patient_key]
    if not todo:
        return out
    primary = sorted({items[i][0].patient_key for i in todo})
    keys_of: dict[str, list[str]] = {pk: [pk] for pk in primary}
    for key, into in s.exec(select(PatientRow.key, PatientRow.merged_into).where(col(PatientRow.merged_into).in_(primary))):
        keys_of[into].append(key)
    every = sorted({k for ks in keys_of.values() for k in ks})
    supp: dict[str, list[Suppression]] = defaultdict(list)
    for r in s.exec(select(Suppression).where(col(Suppression.patient_key).in_(every), col(Suppression.revoked_at).is_(None))
                    .order_by(col(Suppression.id))):
        supp[r.patient_key].append(r)
    marketing = {items[i][0].patient_key for i in todo if items[i][0].purpose == "marketing"}
    authorized: set[str] = set()
    if marketing:
        mkeys = sorted({k for pk in marketing for k in keys_of[pk]})
        authorized = set(s.exec(select(Authorization.patient_key).where(
            col(Authorization.patient_key).in_(mkeys), Authorization.purpose == "marketing",
            col(Authorization.revoked_at).is_(None))).all())
    consent_rows: dict[str, list[str]] = defaultdict(list)
    for pk, resource in s.exec(select(ConsentRecord.patient_key, ConsentRecord.resource).where(
            col(ConsentRecord.patient_key).in_(every), ConsentRecord.status == "active").order_by(col(ConsentRecord.id))):
        consent_rows[pk].append(resource)
    parsed: dict[str, list[Any]] = {}
    for i in todo:
        t, dest = items[i]
        keys = keys_of[t.patient_key]
        rows = sorted((r for k in dict.fromkeys(keys) for r in supp.get(k, ())), key=lambda r: r.id or 0)
        reason = _opt_out(rows, dest.name, t.purpose)
        if reason:
            out[i] = ("suppressed", reason)
            continue
        if t.purpose == "marketing" and not any(k in authorized for k in keys):
            out[i] = ("suppressed", "marketing requires a recorded authorization for this patient (none active at send time)")
            continue
        if t.patient_key not in parsed:
            parsed[t.patient_key] = [orjson.loads(r) for k in dict.fromkeys(keys) for r in consent_rows.get(k, ())]
        reason = consent_denies(parsed[t.patient_key], purpose=t.purpose, destination=dest.name, at=at)
        if reason:
            out[i] = ("suppressed", reason)
    return out


def send_time_block(s: Session, t: TriggerRow, dest: Destination, at: datetime) -> tuple[str, str] | None:
    """``(status, reason)`` when the delivery must not be sent now, else None (see module docstring)."""
    return send_time_blocks(s, [(t, dest)], at)[0]
