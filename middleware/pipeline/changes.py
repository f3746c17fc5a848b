"""Apply one resource change to the stored state and turn it into events and triggers.

Shared by HL7v2 messages and FHIR notifications: identity across sources (by business
identifier), ordering (an older version never rolls state back), event derivation,
cancellations, rule evaluation and trigger rows, all inside the caller's transaction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import or_, update
from sqlmodel import Session, select

from ..model import ClinicalEvent, ResourceChange
from ..normalize.events import derive
from ..rules.evaluate import Decision, cancellations, evaluate
from ..rules.load import RuleSet
from ..scheduler.patientctx import hospice_for
from ..storage.tables import EventRow, PatientRow, ResourceIdentity, ResourceState, TriggerRow

log = logging.getLogger("careloop.pipeline")


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


@dataclass
class ChangeResult:
    events: list[EventRow] = field(default_factory=list)
    decisions: list[tuple[ClinicalEvent, list[Decision]]] = field(default_factory=list)
    cancelled: int = 0
    triggers: int = 0
    due_now: bool = False
    note: str | None = None


def resolve_patient_key(session: Session, key: str | None) -> str | None:
    """Follow merges to the surviving patient."""
    seen = set()
    while key and key not in seen:
        seen.add(key)
        row = session.get(PatientRow, key)
        if row is None or not row.merged_into:
            return key
        key = row.merged_into
    return key


def upsert_patient(session: Session, key: str, resource: dict[str, Any], occurred_at: float, now: float) -> None:
    row = session.get(PatientRow, key)
    if row is None:
        session.add(PatientRow(key=key, fhir_id=str(resource.get("id", "")), resource=dumps(resource), updated_at=now, occurred_at=occurred_at))
    elif occurred_at >= row.occurred_at:
        row.resource = dumps(resource)
        row.fhir_id = str(resource.get("id", row.fhir_id))
        row.occurred_at = occurred_at
        row.updated_at = now
        session.add(row)


def load_patient(session: Session, key: str | None) -> dict[str, Any] | None:
    if not key:
        return None
    row = session.get(PatientRow, key)
    return orjson.loads(row.resource) if row else None


def _identifiers(resource: dict[str, Any]) -> list[str]:
    out = []
    for ident in resource.get("identifier") or []:
        if ident.get("system") and ident.get("value"):
            out.append(f"{ident['system']}|{ident['value']}")
    return out


def _version_int(res: dict[str, Any] | None) -> int | None:
    try:
        return int(((res or {}).get("meta") or {}).get("versionId"))
    except (TypeError, ValueError):
        return None


def resolve_key(session: Session, resource: dict[str, Any]) -> str:
    """The stored key of this resource: an earlier key sharing a business identifier wins."""
    own = f"{resource['resourceType']}/{resource.get('id')}"
    idents = _identifiers(resource)
    key = own
    for ident in idents:
        row = session.get(ResourceIdentity, ident)
        if row is not None:
            key = row.resource_key
            break
    for ident in idents:
        if session.get(ResourceIdentity, ident) is None:
            session.add(ResourceIdentity(identifier=ident, resource_key=key))
    return key


def apply_change(
    session: Session,
    change: ResourceChange,
    rs: RuleSet,
    *,
    now: datetime,
    inbound_id: int | None = None,
    keep_status: bool = False,
    source_zone: str | None = None,
    evaluate_rules: bool = True,
) -> ChangeResult:
    """Store the change, derive events, cancel and create triggers. Caller commits."""
    res = ChangeResult()
    resource = dict(change.resource)
    rtype = resource["resourceType"]
    key = resolve_key(session, resource)
    state = session.get(ResourceState, key)
    prev = orjson.loads(state.resource) if state is not None and not state.deleted else None
    occurred = change.occurred_at.timestamp()
    nowts = now.timestamp()
    if state is not None:
        new_v, old_v = _version_int(resource), _version_int(prev)
        same_source = state.source == change.source
        if same_source and new_v is not None and old_v is not None:
            if new_v < old_v or (new_v == old_v and not change.deleted):
                res.note = f"version {new_v} is not newer than stored version {old_v}: ignored"
                return res
        elif occurred < state.occurred_at:
            res.note = "older than the state already held: state not rolled back"
            return res
        if state.deleted and change.deleted:
            res.note = "already deleted"
            return res
    if keep_status and prev is not None and prev.get("status"):
        resource["status"] = prev["status"]
    events = derive(resource, prev, deleted=change.deleted)
    patient_key = resolve_patient_key(session, change.patient_key)
    if state is None:
        state = ResourceState(key=key, resource_type=rtype, resource="{}", source=change.source)
    state.patient_key = patient_key or state.patient_key
    state.status = resource.get("status") if not change.deleted else state.status
    state.version = ((resource.get("meta") or {}).get("versionId")) or state.version
    state.last_updated = ((resource.get("meta") or {}).get("lastUpdated")) or state.last_updated
    state.occurred_at = max(occurred, state.occurred_at)
    if not change.deleted:
        state.resource = dumps(resource)
    state.deleted = change.deleted
    state.source = change.source
    state.updated_at = nowts
    session.add(state)
    if not events:
        res.note = "no change"
        return res
    patient = load_patient(session, patient_key)
    body = dumps(resource if not change.deleted else (prev or resource))
    seen: dict[str, int] = {}
    for etype, pstatus, status in events:
        nth = seen.get(etype, 0)
        seen[etype] = nth + 1
        row = EventRow(
            type=etype, previous_status=pstatus, status=status, resource_type=rtype, resource_key=key,
            patient_key=patient_key, resource=body, source=change.source, arrival=change.arrival,
            occurred_at=occurred, created_at=nowts, inbound_id=inbound_id,
        )
        session.add(row)
        session.flush()
        res.events.append(row)
        ev = ClinicalEvent(
            type=etype, previous_status=pstatus, status=status, resource_type=rtype, resource_key=key,
            patient_key=patient_key, resource=resource if not change.deleted else (prev or resource),
            previous=prev, source=change.source, arrival=change.arrival, occurred_at=change.occurred_at,
        )
        if evaluate_rules:
            on_event(session, ev, row, rs, now=now, patient=patient, source_zone=source_zone, result=res, nth=nth)
    return res


def on_event(
    session: Session,
    ev: ClinicalEvent,
    row: EventRow,
    rs: RuleSet,
    *,
    now: datetime,
    patient: dict[str, Any] | None,
    source_zone: str | None,
    result: ChangeResult,
    only: set[str] | None = None,
    cancel_only_ids: set[int] | None = None,
    nth: int | None = None,
) -> None:
    """Cancel what this event cancels, then record each rule's decision as a trigger row.

    ``only`` limits evaluation to some rule ids and ``cancel_only_ids`` limits
    cancellation to some trigger ids (``careloop reprocess`` uses both so a replay
    never touches triggers it did not create).
    """
    nowts = now.timestamp()
    if ev.arrival != "backfill":
        _cancel(session, ev, row, rs, now, patient, result, cancel_only_ids, nth)
    hospice = hospice_for(session, ev.patient_key, rs)
    decisions = evaluate(ev, rs, now=now, patient=patient, source_zone=source_zone, hospice=hospice, only=only, nth=nth)
    result.decisions.append((ev, decisions))
    for d in decisions:
        if not d.fired:
            continue
        tid = _record_trigger(session, ev, row, d, rs, nowts, result)
        if tid is not None and cancel_only_ids is not None:
            cancel_only_ids.add(tid)


def _cancel(session: Session, ev: ClinicalEvent, row: EventRow, rs: RuleSet, now: datetime,
            patient: dict[str, Any] | None, result: ChangeResult, only_ids: set[int] | None, nth: int | None = None) -> None:
    """Cancel pending triggers at once (visible in /api/triggers before their due time)."""
    nowts = now.timestamp()
    origins: dict[int, dict[str, Any]] = {}
    for c in cancellations(ev, rs, patient, now, nth):
        col = TriggerRow.patient_key if c.same == "patient" else TriggerRow.resource_key
        stmt = select(TriggerRow).where(TriggerRow.rule_id == c.rule_id, TriggerRow.status == "pending", col == c.key)
        if c.within_s:
            stmt = stmt.where(TriggerRow.created_at >= nowts - c.within_s)
        for t in session.exec(stmt):
            if only_ids is not None and t.id not in only_ids:
                continue
            if c.condition is not None:
                eid = t.event_id or 0
                if eid not in origins:
                    erow = session.get(EventRow, eid) if eid else None
                    origins[eid] = orjson.loads(erow.resource) if erow else {}
                if not c.applies(origins[eid], orjson.loads(t.payload or "{}")):
                    continue
            t.status, t.updated_at = "cancelled", nowts
            t.reason = f"cancelled before its due time: {c.reason} (event {row.id})"
            session.add(t)
            result.cancelled += 1


def _record_trigger(
    session: Session, ev: ClinicalEvent, row: EventRow, d: Decision, rs: RuleSet, nowts: float, result: ChangeResult
) -> int | None:
    """Insert the decision as a trigger row (or move the pending one it replaces); return its id."""
    status, reason = d.status or "pending", d.reason
    due = d.due_at.timestamp() if d.due_at else nowts
    if status in ("pending", "skipped") and ev.resource_key:
        existing = session.exec(
            select(TriggerRow).where(
                TriggerRow.rule_id == d.rule_id, TriggerRow.resource_key == ev.resource_key, TriggerRow.status == "pending"
            )
        ).first()
        if existing is not None and existing.dedup_key == d.dedup_key and existing.event_id != row.id:
            if status == "skipped":  # the new time is past or too late: the old reminder must not go out either
                existing.status, existing.reason = "skipped", f"{ev.type} (event {row.id}) moved it: {reason}"
            else:
                existing.due_at = due
                existing.payload = dumps(d.payload)
                existing.reason = f"moved by {ev.type} (event {row.id}) to {d.due_at.isoformat() if d.due_at else 'now'}"
            existing.updated_at = nowts
            session.add(existing)
            result.due_now = result.due_now or (existing.status == "pending" and due <= nowts)
            return existing.id
    if status == "pending" and d.dedup_key and d.dedup_window_s:
        dup = session.exec(
            select(TriggerRow.id).where(
                TriggerRow.dedup_key == d.dedup_key,
                TriggerRow.status.in_(("pending", "fired")),  # type: ignore[attr-defined]
                TriggerRow.created_at >= nowts - d.dedup_window_s,
            )
        ).first()
        if dup is not None:
            status, reason = "skipped", f"duplicate of trigger {dup} within the dedup window"
    origin = f"{d.rule_id}|event:{row.id}"
    if session.exec(select(TriggerRow.id).where(TriggerRow.origin_key == origin)).first() is not None:
        return None
    t = TriggerRow(
        rule_id=d.rule_id, ruleset_version=rs.version, name=d.trigger or d.rule_id, purpose=d.purpose or "",
        destinations=",".join(d.destinations), patient_key=ev.patient_key, resource_key=ev.resource_key,
        origin_key=origin, resource_version=str(((ev.resource.get("meta") or {}).get("versionId")) or row.id),
        event_id=row.id, due_at=due, status=status, reason=reason, dedup_key=d.dedup_key, cancel_scope=d.cancel_scope,
        message_kind=d.message_kind, payload=dumps(d.payload), explain=dumps(d.steps), created_at=nowts, updated_at=nowts,
    )
    session.add(t)
    session.flush()
    result.triggers += 1
    if status == "pending" and due <= nowts:
        result.due_now = True
    return t.id


def merge_patients(session: Session, surviving: str, retired: str, now: datetime) -> int:
    """ADT^A40: later events and pending work follow the surviving patient."""
    nowts = now.timestamp()
    surviving = resolve_patient_key(session, surviving) or surviving
    if surviving == retired:
        return 0
    row = session.get(PatientRow, retired)
    if row is None:
        session.add(PatientRow(key=retired, fhir_id="", resource="{}", merged_into=surviving, updated_at=nowts))
    else:
        row.merged_into = surviving
        row.updated_at = nowts
        session.add(row)
    n = 0
    for table, col in ((ResourceState, ResourceState.patient_key), (TriggerRow, TriggerRow.patient_key)):
        stmt = update(table).where(col == retired).values(patient_key=surviving)
        n += session.exec(stmt).rowcount or 0  # type: ignore[call-overload]
    session.add(
        EventRow(type="patient.merged", previous_status=None, status=None, resource_type="Patient",
                 resource_key=f"Patient/{retired}", patient_key=surviving, resource=dumps({"retired": retired, "surviving": surviving}),
                 source="", arrival="message", occurred_at=nowts, created_at=nowts)
    )
    return n


__all__ = ["apply_change", "merge_patients", "upsert_patient", "resolve_patient_key", "ChangeResult", "or_"]
