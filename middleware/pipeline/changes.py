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
from sqlmodel import Session, col

from ..model import ClinicalEvent, EventRecord, ResourceChange
from ..normalize.events import derive
from ..rules.evaluate import Decision, build_env, cancellations, evaluate
from ..rules.journeys import apply_exclusive
from ..rules.recheck import event_for, recheck
from ..rules.load import RuleSet
from ..scheduler.patientctx import hospice_for
from ..storage.rawsql import Raw
from ..storage.tables import EventRow, PatientRow, ResourceState, TriggerRow

log = logging.getLogger("careloop.pipeline")


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


@dataclass
class ChangeResult:
    events: list[EventRecord] = field(default_factory=list)
    decisions: list[tuple[ClinicalEvent, list[Decision]]] = field(default_factory=list)
    cancelled: int = 0
    triggers: int = 0
    due_now: bool = False
    note: str | None = None
    key: str | None = None  # the stored key of the changed resource (``resolve_key``)


def _patient_row(db: Raw, key: str | None) -> tuple[str | None, str | None]:
    """(surviving key after merges, its stored resource JSON or None) in one read per hop."""
    seen = set()
    while key and key not in seen:
        seen.add(key)
        row = db.one("SELECT merged_into, resource FROM patient WHERE key = ?", (key,))
        if row is None:
            return key, None
        if not row[0]:
            return key, row[1]
        key = row[0]
    return key, None


def resolve_patient_key(session: Session, key: str | None, raw: Raw | None = None) -> str | None:
    """Follow merges to the surviving patient."""
    return _patient_row(raw or Raw(session), key)[0]


def upsert_patient(session: Session, key: str, resource: dict[str, Any], occurred_at: float, now: float,
                   raw: Raw | None = None) -> None:
    """Store the patient unless a later version is already held (one statement)."""
    (raw or Raw(session)).run(
        "INSERT INTO patient (key, fhir_id, resource, merged_into, updated_at, occurred_at) VALUES (?, ?, ?, NULL, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET resource = excluded.resource, fhir_id = COALESCE(?, patient.fhir_id), "
        "occurred_at = excluded.occurred_at, updated_at = excluded.updated_at WHERE excluded.occurred_at >= patient.occurred_at",
        (key, str(resource.get("id", "")), dumps(resource), now, occurred_at, str(resource["id"]) if "id" in resource else None))


def load_patient(session: Session, key: str | None, raw: Raw | None = None) -> dict[str, Any] | None:
    if not key:
        return None
    row = (raw or Raw(session)).one("SELECT resource FROM patient WHERE key = ?", (key,))
    return orjson.loads(row[0]) if row else None


def _identifiers(resource: dict[str, Any]) -> list[str]:
    out = []
    for ident in resource.get("identifier") or []:
        if ident.get("system") and ident.get("value"):
            out.append(f"{ident['system']}|{ident['value']}")
    return out


def _version_int(res: dict[str, Any] | None) -> int | None:
    try:
        version = ((res or {}).get("meta") or {}).get("versionId")
        return None if version is None else int(version)  # int(None) raised TypeError: the same None
    except (TypeError, ValueError):
        return None


def lookup_identity(session: Session, identifier: str, raw: Raw | None = None) -> str | None:
    """The resource key stored for a business identifier (or a source-local FHIR id), if any."""
    row = (raw or Raw(session)).one("SELECT resource_key FROM resource_identity WHERE identifier = ?", (identifier,))
    return row[0] if row else None


def remember_identity(session: Session, identifier: str, key: str, raw: Raw | None = None) -> None:
    """Record ``identifier -> key`` unless the identifier is already known (the first key wins)."""
    (raw or Raw(session)).run("INSERT INTO resource_identity (identifier, resource_key) VALUES (?, ?) "
                              "ON CONFLICT (identifier) DO NOTHING", (identifier, key))


def resolve_key(session: Session, resource: dict[str, Any], raw: Raw | None = None) -> str:
    """The stored key of this resource: an earlier key sharing a business identifier wins."""
    db = raw or Raw(session)
    own = f"{resource['resourceType']}/{resource.get('id')}"
    idents = _identifiers(resource)
    if not idents:
        return own
    found = dict(db.all(
        f"SELECT identifier, resource_key FROM resource_identity WHERE identifier IN ({', '.join('?' * len(idents))})",
        idents))
    key = next((found[i] for i in idents if i in found), own)
    db.many("INSERT INTO resource_identity (identifier, resource_key) VALUES (?, ?)",
            [(i, key) for i in dict.fromkeys(idents) if i not in found])
    return key


_STATE_COLS = "key, resource_type, patient_key, status, version, last_updated, occurred_at, resource, source, deleted, updated_at"


@dataclass
class StateRow:
    """One ``resource_state`` row, read and written with plain SQL."""

    key: str
    resource_type: str
    patient_key: str | None
    status: str | None
    version: str | None
    last_updated: str | None
    occurred_at: float
    resource: str
    source: str
    deleted: bool
    updated_at: float

    def values(self) -> tuple[Any, ...]:
        return (self.key, self.resource_type, self.patient_key, self.status, self.version, self.last_updated,
                self.occurred_at, self.resource, self.source, bool(self.deleted), self.updated_at)


def load_state(session: Session, key: str, raw: Raw | None = None) -> StateRow | None:
    row = (raw or Raw(session)).one(f"SELECT {_STATE_COLS} FROM resource_state WHERE key = ?", (key,))
    return StateRow(*row) if row is not None else None


def save_state(db: Raw, st: StateRow, new: bool) -> None:
    if new:
        db.run(f"INSERT INTO resource_state ({_STATE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", st.values())
    else:
        db.run("UPDATE resource_state SET resource_type = ?, patient_key = ?, status = ?, version = ?, last_updated = ?, "
               "occurred_at = ?, resource = ?, source = ?, deleted = ?, updated_at = ? WHERE key = ?",
               st.values()[1:] + (st.key,))


_EVENT_INSERT = (
    "INSERT INTO event (type, previous_status, status, resource_type, resource_key, patient_key, resource, source, "
    "arrival, occurred_at, created_at, inbound_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


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
    db = Raw(session)
    res = ChangeResult()
    resource = dict(change.resource)
    rtype = resource["resourceType"]
    key = res.key = resolve_key(session, resource, db)
    state = load_state(session, key, db)
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
    partial = None
    if keep_status and prev is not None and prev.get("status"):
        resource["status"] = prev["status"]
        partial = "a partial update (the message carries no status)"
    events = derive(resource, prev, deleted=change.deleted)
    patient_key, patient_json = _patient_row(db, change.patient_key)
    is_new = state is None
    if state is None:
        state = StateRow(key=key, resource_type=rtype, patient_key=None, status=None, version=None, last_updated=None,
                         occurred_at=0.0, resource="{}", source=change.source, deleted=False, updated_at=0.0)
    meta = resource.get("meta") or {}
    state.patient_key = patient_key or state.patient_key
    state.status = resource.get("status") if not change.deleted else state.status
    state.version = meta.get("versionId") or state.version
    state.last_updated = meta.get("lastUpdated") or state.last_updated
    state.occurred_at = max(occurred, state.occurred_at)
    if not change.deleted:
        state.resource = dumps(resource)
    state.deleted = change.deleted
    state.source = change.source
    state.updated_at = nowts
    save_state(db, state, is_new)
    if not events:
        res.note = "no change"
        return res
    patient = orjson.loads(patient_json) if patient_json else None
    shown = resource if not change.deleted else (prev or resource)
    body = state.resource if shown is resource and not change.deleted else dumps(shown)
    seen: dict[str, int] = {}
    for etype, pstatus, status in events:
        nth = seen.get(etype, 0)
        seen[etype] = nth + 1
        values = (etype, pstatus, status, rtype, key, patient_key, body, change.source, change.arrival, occurred, nowts, inbound_id)
        row = EventRecord(db.insert_id(_EVENT_INSERT, values), *values)
        res.events.append(row)
        ev = ClinicalEvent(
            type=etype, previous_status=pstatus, status=status, resource_type=rtype, resource_key=key,
            patient_key=patient_key, resource=shown, previous=prev, source=change.source, arrival=change.arrival,
            occurred_at=change.occurred_at,
        )
        if evaluate_rules:
            on_event(session, ev, row, rs, now=now, patient=patient, source_zone=source_zone, result=res, nth=nth, raw=db)
    if evaluate_rules and not change.deleted and prev is not None and rs.recheck_by_type.get(rtype):
        _recheck_pending(session, db, rs, key, resource, prev, patient_key, patient, change, now, res, partial)
    return res


def _recheck_pending(session: Session, db: Raw, rs: RuleSet, key: str, resource: dict[str, Any],
                     prev: dict[str, Any] | None, patient_key: str | None, patient: dict[str, Any] | None,
                     change: ResourceChange, now: datetime, res: ChangeResult, partial: str | None) -> None:
    """A change to a resource re-checks the rules of its pending triggers (rules/recheck.py):
    cancelled when ``where`` is false on complete data (``on_no_longer_matching: cancel``),
    kept and flagged when the change cannot be evaluated, a flag cleared when it holds again."""
    rules = {cr.id: cr for cr in rs.recheck_by_type[resource["resourceType"]]}
    own = {e.id for e in res.events}
    ids = sorted(rules)
    rows = db.all(
        f"SELECT id, rule_id, event_id, flag FROM \"trigger\" WHERE rule_id IN ({', '.join('?' * len(ids))}) "
        "AND resource_key = ? AND status = 'pending'", (*ids, key))
    rows = [r for r in rows if r[2] not in own]
    if not rows:
        return
    what = f"{res.events[-1].type} (event {res.events[-1].id})" if res.events else "a change"
    ev = event_for(resource, prev, key, patient_key, change.source, change.arrival, change.occurred_at)
    needs_hospice = any("%hospice" in (rules[r[1]].rule.where or "") for r in rows)
    env = build_env(ev, patient, now, hospice_for(session, patient_key, rs) if needs_hospice else None)
    verdicts = {rid: recheck(rules[rid], resource, prev, env, partial=partial) for rid in {r[1] for r in rows}}
    nowts = now.timestamp()
    cancel, flag, clear = [], [], []
    for tid, rid, _, old_flag in rows:
        v = verdicts[rid]
        if v.verdict == "no-match" and rules[rid].rule.on_no_longer_matching == "cancel":
            cancel.append((nowts, f"cancelled: no longer matches after {what}: {v.why}", tid))
        elif v.verdict == "unknown":
            flag.append((f"kept after {what}: {v.why}", nowts, tid))
        elif v.verdict == "match" and old_flag:
            clear.append((nowts, tid))
    db.many("UPDATE \"trigger\" SET status = 'cancelled', updated_at = ?, reason = ? WHERE id = ?", cancel)
    db.many("UPDATE \"trigger\" SET flag = ?, updated_at = ? WHERE id = ?", flag)
    db.many("UPDATE \"trigger\" SET flag = NULL, updated_at = ? WHERE id = ?", clear)
    res.cancelled += len(cancel)


def on_event(
    session: Session,
    ev: ClinicalEvent,
    row: EventRow | EventRecord,
    rs: RuleSet,
    *,
    now: datetime,
    patient: dict[str, Any] | None,
    source_zone: str | None,
    result: ChangeResult,
    only: set[str] | None = None,
    cancel_only_ids: set[int] | None = None,
    nth: int | None = None,
    raw: Raw | None = None,
) -> None:
    """Cancel what this event cancels, then record each rule's decision as a trigger row.

    ``only`` limits evaluation to some rule ids and ``cancel_only_ids`` limits
    cancellation to some trigger ids (``careloop reprocess`` uses both so a replay
    never touches triggers it did not create).
    """
    db = raw or Raw(session)
    nowts = now.timestamp()
    if ev.arrival != "backfill":
        _cancel(db, ev, row, rs, now, patient, result, cancel_only_ids, nth)
    hospice = hospice_for(session, ev.patient_key, rs)
    decisions = evaluate(ev, rs, now=now, patient=patient, source_zone=source_zone, hospice=hospice, only=only, nth=nth)
    if rs.superseded_by:
        apply_exclusive(decisions, rs, lambda rule_ids: _holds(db, rule_ids, ev.resource_key))
    result.decisions.append((ev, decisions))
    for d in decisions:
        if not d.fired:
            continue
        tid = _record_trigger(db, ev, row, d, rs, nowts, result)
        if tid is not None and cancel_only_ids is not None:
            cancel_only_ids.add(tid)


#: the flag of a trigger whose resource changed in a way careloop has not read yet
UNREAD = "notified of a change not read yet (id-only notification)"


def flag_unread(session: Session, key: str, rs: RuleSet, now: datetime) -> int:
    """An id-only notification names a changed resource careloop has not read: its pending
    triggers of re-checked rules are kept and flagged (never cancelled) until the read
    arrives and re-checks them (rules/recheck.py). Returns how many were flagged."""
    ids = sorted({cr.id for crs in rs.recheck_by_type.values() for cr in crs})
    if not ids:
        return 0
    db = Raw(session)
    rows = db.all(f"SELECT id FROM \"trigger\" WHERE rule_id IN ({', '.join('?' * len(ids))}) AND resource_key = ? "
                  "AND status = 'pending'", (*ids, key))
    db.many("UPDATE \"trigger\" SET flag = ?, updated_at = ? WHERE id = ?", [(UNREAD, now.timestamp(), r[0]) for r in rows])
    return len(rows)


def clear_unread(session: Session, key: str, now: datetime) -> None:
    """The read showed nothing newer than what is held: the unread flag no longer applies."""
    Raw(session).run("UPDATE \"trigger\" SET flag = NULL, updated_at = ? WHERE resource_key = ? AND status = 'pending' "
                     "AND flag = ?", (now.timestamp(), key, UNREAD))


def _holds(db: Raw, rule_ids: tuple[str, ...], resource_key: str) -> bool:
    """Has one of these rules a pending or fired trigger for this resource (overlap.exclusive_with)?"""
    return db.one(
        f"SELECT 1 FROM \"trigger\" WHERE rule_id IN ({', '.join('?' * len(rule_ids))}) AND resource_key = ? "
        "AND status IN ('pending', 'fired') LIMIT 1", (*rule_ids, resource_key)) is not None


_PENDING_BY = {
    "patient": "SELECT id, event_id, payload FROM \"trigger\" WHERE rule_id = ? AND status = 'pending' AND patient_key = ?",
    "resource": "SELECT id, event_id, payload FROM \"trigger\" WHERE rule_id = ? AND status = 'pending' AND resource_key = ?",
}


def _cancel(db: Raw, ev: ClinicalEvent, row: EventRow | EventRecord, rs: RuleSet, now: datetime,
            patient: dict[str, Any] | None, result: ChangeResult, only_ids: set[int] | None, nth: int | None = None) -> None:
    """Cancel pending triggers at once (visible in /api/triggers before their due time)."""
    nowts = now.timestamp()
    origins: dict[int, dict[str, Any]] = {}
    for c in cancellations(ev, rs, patient, now, nth):
        sql = _PENDING_BY["patient" if c.same == "patient" else "resource"]
        params: tuple[Any, ...] = (c.rule_id, c.key)
        if c.within_s:
            sql, params = sql + " AND created_at >= ?", params + (nowts - c.within_s,)
        hits = []
        for tid, event_id, payload in db.all(sql, params):
            if only_ids is not None and tid not in only_ids:
                continue
            if c.condition is not None:
                eid = event_id or 0
                if eid not in origins:
                    erow = db.one("SELECT resource FROM event WHERE id = ?", (eid,)) if eid else None
                    origins[eid] = orjson.loads(erow[0]) if erow else {}
                if not c.applies(origins[eid], orjson.loads(payload or "{}")):
                    continue
            hits.append((nowts, f"cancelled before its due time: {c.reason} (event {row.id})", tid))
        db.many("UPDATE \"trigger\" SET status = 'cancelled', updated_at = ?, reason = ? WHERE id = ?", hits)
        result.cancelled += len(hits)


_TRIGGER_COLS = (
    "rule_id, ruleset_version, name, purpose, destinations, patient_key, resource_key, origin_key, resource_version, "
    "event_id, due_at, status, reason, dedup_key, cancel_scope, message_kind, payload, explain, created_at, updated_at, "
    "journey_id, journey_step"
)
_TRIGGER_INSERT = f"INSERT INTO \"trigger\" ({_TRIGGER_COLS}) VALUES ({', '.join('?' * 22)}) ON CONFLICT (origin_key) DO NOTHING"


def _record_trigger(
    db: Raw, ev: ClinicalEvent, row: EventRow | EventRecord, d: Decision, rs: RuleSet, nowts: float, result: ChangeResult
) -> int | None:
    """Insert the decision as a trigger row (or move the pending one it replaces); return its id."""
    status, reason = d.status or "pending", d.reason
    due = d.due_at.timestamp() if d.due_at else nowts
    if status in ("pending", "skipped") and ev.resource_key:
        existing = db.one(
            "SELECT id, dedup_key, event_id FROM \"trigger\" WHERE rule_id = ? AND resource_key = ? AND status = 'pending'"
            " ORDER BY id LIMIT 1", (d.rule_id, ev.resource_key))
        if existing is not None and existing[1] == d.dedup_key and existing[2] != row.id:
            if status == "skipped":  # the new time is past or too late: the old reminder must not go out either
                db.run("UPDATE \"trigger\" SET status = 'skipped', reason = ?, updated_at = ? WHERE id = ?",
                       (f"{ev.type} (event {row.id}) moved it: {reason}", nowts, existing[0]))
            else:
                db.run("UPDATE \"trigger\" SET due_at = ?, payload = ?, reason = ?, updated_at = ? WHERE id = ?",
                       (due, dumps(d.payload), f"moved by {ev.type} (event {row.id}) to {d.due_at.isoformat() if d.due_at else 'now'}",
                        nowts, existing[0]))
            result.due_now = result.due_now or (status != "skipped" and due <= nowts)
            return int(existing[0])
    if status == "pending" and d.dedup_key and d.dedup_window_s:
        # a journey's steps share its dedup key: only another entry (another event) is a duplicate
        other_entry = " AND event_id <> ?" if d.journey_id else ""
        dup = db.one(
            "SELECT id FROM \"trigger\" WHERE dedup_key = ? AND status IN ('pending', 'fired') AND created_at >= ?"
            f"{other_entry} LIMIT 1", (d.dedup_key, nowts - d.dedup_window_s) + ((row.id,) if d.journey_id else ()))
        if dup is not None:
            status, reason = "skipped", f"duplicate of trigger {dup[0]} within the dedup window"
    origin = f"{d.rule_id}|event:{row.id}"
    version = str(((ev.resource.get("meta") or {}).get("versionId")) or row.id)
    tid: int | None = db.insert_id(_TRIGGER_INSERT, (
        d.rule_id, rs.version, d.trigger or d.rule_id, d.purpose or "", ",".join(d.destinations), ev.patient_key,
        ev.resource_key, origin, version, row.id, due, status, reason, d.dedup_key, d.cancel_scope, d.message_kind,
        dumps(d.payload), dumps(d.steps), nowts, nowts, d.journey_id, d.journey_step))
    if tid is None:  # this rule already made a trigger from this event (reprocessing)
        return None
    result.triggers += 1
    if status == "pending" and due <= nowts:
        result.due_now = True
    return tid


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
    for table, key_col in ((ResourceState, ResourceState.patient_key), (TriggerRow, TriggerRow.patient_key)):
        stmt = update(table).where(col(key_col) == retired).values(patient_key=surviving)
        n += session.exec(stmt).rowcount or 0
    session.add(
        EventRow(type="patient.merged", previous_status=None, status=None, resource_type="Patient",
                 resource_key=f"Patient/{retired}", patient_key=surviving, resource=dumps({"retired": retired, "surviving": surviving}),
                 source="", arrival="message", occurred_at=nowts, created_at=nowts)
    )
    return n


__all__ = ["apply_change", "merge_patients", "upsert_patient", "resolve_patient_key", "ChangeResult", "or_"]
