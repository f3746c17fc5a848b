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
from ..model import ClinicalEvent, ResourceChange
from ..normalize.events import derive
from ..outcomes import track as outcomes
from . import exits
from ..rules.evaluate import Cancellation, Decision, build_env, cancellations, evaluate
from ..rules.journeys import apply_exclusive
from ..rules.recheck import event_for, recheck
from ..rules.suppress import is_deceased
from ..rules.load import RuleSet
from ..scheduler.patientctx import hospice_for, hospice_from, hospice_query
from ..storage.patient_ids import issue_patient_id, merge_patient_ids, patient_id_for
from ..storage.queries import ingest as q
from ..storage.queries.ingest import EventRecord, StateRecord
from ..storage.sql import Query, UnitOfWork
from ..storage.statuses import TriggerStatus
from ..storage.tables import EventRow

log = logging.getLogger("careloop.pipeline")


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


@dataclass
class ChangeResult:
    events: list[EventRecord] = field(default_factory=list)
    decisions: list[tuple[ClinicalEvent, list[Decision]]] = field(default_factory=list)
    cancelled: int = 0
    exits: int = 0  # exit deliveries opened (issue 17)
    triggers: int = 0
    due_now: bool = False
    note: str | None = None
    key: str | None = None  # the stored key of the changed resource (``resolve_key``)


def _patient_row(u: UnitOfWork, key: str | None, first: list[q.PatientLink] | None = None) -> tuple[str | None, str | None]:
    """(surviving key after merges, its stored resource JSON or None) in one read per hop
    (``first``: the first hop's rows, already read)."""
    seen = set()
    while key and key not in seen:
        seen.add(key)
        if first is not None:
            row, first = (first[0] if first else None), None
        else:
            row = u.one(q.PATIENT_LINK, key=key)
        if row is None:
            return key, None
        if not row.merged_into:
            return key, row.resource
        key = row.merged_into
    return key, None


def resolve_patient_key(u: UnitOfWork, key: str | None) -> str | None:
    """Follow merges to the surviving patient."""
    return _patient_row(u, key)[0]


def upsert_patient(u: UnitOfWork, key: str, resource: dict[str, Any], occurred_at: float, now: float) -> None:
    """Store the patient unless a later version is already held (one statement)."""
    u.send(q.PATIENT_UPSERT, key=key, fhir_id=str(resource.get("id", "")), resource=dumps(resource), now=now,
          occurred_at=occurred_at, new_fhir_id=str(resource["id"]) if "id" in resource else None)


def load_patient(u: UnitOfWork, key: str | None) -> dict[str, Any] | None:
    if not key:
        return None
    resource = u.scalar(q.PATIENT_RESOURCE, key=key)
    return orjson.loads(resource) if resource is not None else None


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


def lookup_identity(u: UnitOfWork, identifier: str) -> str | None:
    """The resource key stored for a business identifier (or a source-local FHIR id), if any."""
    key: str | None = u.scalar(q.IDENTITY_GET, identifier=identifier)
    return key


def remember_identity(u: UnitOfWork, identifier: str, key: str) -> None:
    """Record ``identifier -> key`` unless the identifier is already known (the first key wins)."""
    u.send(q.IDENTITY_REMEMBER, identifier=identifier, key=key)


def resolve_key(u: UnitOfWork, resource: dict[str, Any]) -> str:
    """The stored key of this resource: an earlier key sharing a business identifier wins."""
    return _resolve(u, resource, _identifiers(resource), None)


def _resolve(u: UnitOfWork, resource: dict[str, Any], idents: list[str], known: list[q.Identity] | None) -> str:
    own = f"{resource['resourceType']}/{resource.get('id')}"
    if not idents:
        return own
    found = dict(known if known is not None else u.all(q.IDENTITY_ANY, identifiers=idents))
    key = next((found[i] for i in idents if i in found), own)
    u.many(q.IDENTITY_ADD, [{"identifier": i, "key": key} for i in dict.fromkeys(idents) if i not in found])
    return key


StateRow = StateRecord  # the name this module used before the record moved to storage


def load_state(u: UnitOfWork, key: str) -> StateRecord | None:
    row: StateRecord | None = u.one(q.STATE_GET, key=key)
    return row


def save_state(u: UnitOfWork, st: StateRecord, new: bool) -> None:
    u.send(q.STATE_INSERT if new else q.STATE_UPDATE, **st._asdict())


def apply_change(
    u: UnitOfWork,
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
    # the identity, the state under the resource's own key and the patient, read together
    # (one round trip in pipeline mode); the state is read again when an identifier maps elsewhere
    own = f"{rtype}/{resource.get('id')}"
    idents = _identifiers(resource)
    calls: list[tuple[Query, dict[str, Any]]] = [(q.STATE_GET, {"key": own})]
    if idents:
        calls.append((q.IDENTITY_ANY, {"identifiers": idents}))
    if change.patient_key:
        calls.append((q.PATIENT_LINK, {"key": change.patient_key}))
    got = u.fetch(*calls)
    key = res.key = _resolve(u, resource, idents, got[1] if idents else None)
    state = (got[0][0] if got[0] else None) if key == own else load_state(u, key)
    first_link = got[-1] if change.patient_key else None
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
    patient_key, patient_json = _patient_row(u, change.patient_key, first_link)
    is_new = state is None
    if state is None:
        state = StateRecord(key=key, resource_type=rtype, patient_key=None, status=None, version=None, last_updated=None,
                            occurred_at=0.0, resource="{}", source=change.source, deleted=False, updated_at=0.0)
    meta = resource.get("meta") or {}
    state = state._replace(
        patient_key=patient_key or state.patient_key,
        status=resource.get("status") if not change.deleted else state.status,
        version=meta.get("versionId") or state.version,
        last_updated=meta.get("lastUpdated") or state.last_updated,
        occurred_at=max(occurred, state.occurred_at),
        resource=dumps(resource) if not change.deleted else state.resource,
        deleted=bool(change.deleted),
        source=change.source,
        updated_at=nowts,
    )
    save_state(u, state, is_new)
    patient = orjson.loads(patient_json) if patient_json else None
    if patient_key and patient and is_deceased(patient) and evaluate_rules:
        dests = exits.exit_destinations(rs)
        if dests:  # a death exits every journey at every destination (issue 17), whatever else changed
            res.exits += exits.open_for_death(u, patient_key, dests, nowts)
    if not events:
        res.note = "no change"
        return res
    shown = resource if not change.deleted else (prev or resource)
    body = state.resource if shown is resource and not change.deleted else dumps(shown)
    # careloop's internal id, stamped on each event: read with the patient's link when it survives
    link = first_link[0] if first_link else None
    if link is not None and not link.merged_into and patient_key == change.patient_key:
        patient_id = link.patient_id or (issue_patient_id(u, patient_key, nowts) if patient_key else None)
    else:
        patient_id = patient_id_for(u, patient_key, nowts)
    seen: dict[str, int] = {}
    # A resource first stored by this change has no triggers yet: careloop makes a trigger only from an
    # event of a stored resource, and stored state is never deleted (merges repoint patients, not
    # resources). Its first event skips the look-up of pending triggers for the same resource (issue 16);
    # later events of this change look, since the first one's triggers are there now.
    fresh = is_new
    for etype, pstatus, status in events:
        nth = seen.get(etype, 0)
        seen[etype] = nth + 1
        values = (etype, pstatus, status, rtype, key, patient_key, body, change.source, change.arrival, occurred, nowts, inbound_id,
                  patient_id)
        ev = ClinicalEvent(
            type=etype, previous_status=pstatus, status=status, resource_type=rtype, resource_key=key,
            patient_key=patient_key, resource=shown, previous=prev, source=change.source, arrival=change.arrival,
            occurred_at=change.occurred_at, conditions=change.conditions,
        )
        # the event's INSERT travels with the reads its rules need (one round trip in pipeline mode)
        reads = _EventReads(ev, rs, patient, now, nth) if evaluate_rules else None
        # ... and the patient's journey entries this event may settle (outcomes), in the same round trip
        entries = outcomes.entries_call(rs, patient_key, etype)
        got = u.fetch((q.EVENT_INSERT, dict(zip(q.EVENT_COLUMNS, values))), *(reads.calls if reads else ()),
                      *((entries,) if entries else ()))
        row = EventRecord(got[0][0][0], *values)
        res.events.append(row)
        if reads is not None:
            _after_reads(u, ev, row, rs, reads, got[1:1 + len(reads.calls)], now=now, patient=patient,
                         source_zone=source_zone, result=res, nth=nth, fresh=fresh)
        fresh = False
        if entries:  # goals this event settles (late ones too)
            outcomes.after_event_rows(u, rs, patient_key, etype, got[-1], now)
    if evaluate_rules and not change.deleted and prev is not None and rs.recheck_by_type.get(rtype):
        _recheck_pending(u, rs, key, resource, prev, patient_key, patient, change, now, res, partial)
    return res


def _recheck_pending(u: UnitOfWork, rs: RuleSet, key: str, resource: dict[str, Any],
                     prev: dict[str, Any] | None, patient_key: str | None, patient: dict[str, Any] | None,
                     change: ResourceChange, now: datetime, res: ChangeResult, partial: str | None) -> None:
    """A change to a resource re-checks the rules of its pending triggers (rules/recheck.py):
    cancelled when ``where`` is false on complete data (``on_no_longer_matching: cancel``),
    kept and flagged when the change cannot be evaluated, a flag cleared when it holds again."""
    rules = {cr.id: cr for cr in rs.recheck_by_type[resource["resourceType"]]}
    own = {e.id for e in res.events}
    rows = [r for r in u.all(q.RECHECK_PENDING, rule_ids=sorted(rules), resource_key=key) if r.event_id not in own]
    if not rows:
        return
    what = f"{res.events[-1].type} (event {res.events[-1].id})" if res.events else "a change"
    ev = event_for(resource, prev, key, patient_key, change.source, change.arrival, change.occurred_at)
    needs_hospice = any("%hospice" in (rules[r.rule_id].rule.where or "") for r in rows)
    env = build_env(ev, patient, now, hospice_for(u, patient_key, rs) if needs_hospice else None)
    verdicts = {rid: recheck(rules[rid], resource, prev, env, partial=partial) for rid in {r.rule_id for r in rows}}
    nowts = now.timestamp()
    cancel, flag, clear = [], [], []
    for r in rows:
        v = verdicts[r.rule_id]
        if v.verdict == "no-match" and rules[r.rule_id].rule.on_no_longer_matching == "cancel":
            cancel.append({"now": nowts, "reason": f"cancelled: no longer matches after {what}: {v.why}", "id": r.id})
        elif v.verdict == "unknown":
            flag.append({"flag": f"kept after {what}: {v.why}", "now": nowts, "id": r.id})
        elif v.verdict == "match" and r.flag:
            clear.append({"flag": None, "now": nowts, "id": r.id})
    u.many(q.TRIGGER_CANCEL, cancel)
    u.many(q.TRIGGER_FLAG, flag + clear)
    res.cancelled += len(cancel)


def on_event(
    u: UnitOfWork,
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
) -> None:
    """Cancel what this event cancels, then record each rule's decision as a trigger row.

    ``only`` limits evaluation to some rule ids and ``cancel_only_ids`` limits
    cancellation to some trigger ids (``careloop reprocess`` uses both so a replay
    never touches triggers it did not create).
    """
    reads = _EventReads(ev, rs, patient, now, nth)
    got = u.fetch(*reads.calls) if reads.calls else []  # one round trip in pipeline mode
    _after_reads(u, ev, row, rs, reads, got, now=now, patient=patient, source_zone=source_zone, result=result, only=only,
                 cancel_only_ids=cancel_only_ids, nth=nth)


class _EventReads:
    """The reads an event needs before its rules are evaluated: the pending triggers each of its
    cancellations may cancel, and the patient's hospice resources (sent together)."""

    __slots__ = ("wanted", "calls", "scopes", "hospice", "exit_dests")

    def __init__(self, ev: ClinicalEvent, rs: RuleSet, patient: dict[str, Any] | None, now: datetime, nth: int | None) -> None:
        nowts = now.timestamp()
        self.wanted = cancellations(ev, rs, patient, now, nth) if ev.arrival != "backfill" else []
        # one read per scope (patient or resource key) for all the rules cancelled in it
        self.scopes: list[tuple[str, str]] = list(dict.fromkeys((c.same, c.key) for c in self.wanted))
        self.calls = [_pending_call([c for c in self.wanted if (c.same, c.key) == s], nowts) for s in self.scopes]
        # and, where destinations take exits, the entries they received that these cancellations end
        self.exit_dests = exits.exit_destinations(rs) if self.scopes else []
        if self.exit_dests:
            for s in self.scopes:
                cs = [c for c in self.wanted if (c.same, c.key) == s]
                self.calls.append(exits.entries_call(cs, self.exit_dests, min(_since(c, nowts) for c in cs)))
        self.hospice = hospice_query(ev.patient_key, rs)
        if self.hospice is not None:
            self.calls.append(self.hospice)

    @property
    def hospice_at(self) -> int:
        """Where the hospice read's rows are in the fetched results."""
        return len(self.scopes) * (2 if self.exit_dests else 1)


def _after_reads(
    u: UnitOfWork, ev: ClinicalEvent, row: EventRow | EventRecord, rs: RuleSet, reads: _EventReads, got: list[list[Any]], *,
    now: datetime, patient: dict[str, Any] | None, source_zone: str | None, result: ChangeResult,
    only: set[str] | None = None, cancel_only_ids: set[int] | None = None, nth: int | None = None,
    fresh: bool = False,
) -> None:
    if reads.wanted:
        nowts = now.timestamp()
        by_scope = dict(zip(reads.scopes, got))
        _cancel(u, row, now, result, cancel_only_ids,
                [(c, [t for t in by_scope[(c.same, c.key)] if t.rule_id == c.rule_id and t.created_at >= _since(c, nowts)])
                 for c in reads.wanted])
        if reads.exit_dests and cancel_only_ids is None:
            entries = dict(zip(reads.scopes, got[len(reads.scopes):2 * len(reads.scopes)]))
            origins: dict[int, dict[str, Any]] = {}
            result.exits += exits.open_entries(u, [
                e for c in reads.wanted for e in entries[(c.same, c.key)]
                if e.rule_id == c.rule_id and e.created_at >= _since(c, nowts) and _applies(u, c, e.event_id, e.payload, origins)],
                nowts)
    hospice = hospice_from(got[reads.hospice_at], rs) if reads.hospice is not None else None
    decisions = evaluate(ev, rs, now=now, patient=patient, source_zone=source_zone, hospice=hospice, only=only, nth=nth)
    if rs.superseded_by:
        apply_exclusive(decisions, rs, lambda rule_ids: _holds(u, rule_ids, ev.resource_key))
    result.decisions.append((ev, decisions))
    for d in decisions:
        if d.status == "unevaluable":
            log.warning("rule cannot be evaluated", extra={"action": "rules.unevaluable", "rule_id": d.rule_id,
                                                            "event_id": row.id})
    pid = getattr(row, "patient_id", None)
    arms = {}
    fired = []
    for d in decisions:
        if not d.fired:
            continue
        arm = arms[id(d)] = outcomes.before_trigger(u, rs, d.rule_id, pid or ev.patient_key, now)
        if arm.held_out:  # measured exactly like a sent entry, never contacted
            d.status, d.reason = "held_out", f"held out ({arm.experiment} {arm.period}): measured, not contacted"
        else:
            fired.append(d)
    tids = _record_triggers(u, ev, row, fired, rs, now.timestamp(), result, cancel_only_ids, fresh) if fired else {}
    opened: set[str] = set()  # one INSERT per journey entry, however many of this event's rules name it
    for d in decisions:
        if id(d) in arms:
            outcomes.after_trigger(u, rs, rule_id=d.rule_id, journey_id=d.journey_id, patient_key=ev.patient_key,
                                   patient_id=pid, event_id=row.id, origin=ev.resource, origin_key=ev.resource_key,
                                   trigger_id=tids.get(id(d)), assignment=arms[id(d)], now=now, recorded=ev.occurred_at,
                                   opened=opened)


_EVER = float("-inf")  # "created at any time"

#: the flag of a trigger whose resource changed in a way careloop has not read yet
UNREAD = "notified of a change not read yet (id-only notification)"


def flag_unread(u: UnitOfWork, key: str, rs: RuleSet, now: datetime) -> int:
    """An id-only notification names a changed resource careloop has not read: its pending
    triggers of re-checked rules are kept and flagged (never cancelled) until the read
    arrives and re-checks them (rules/recheck.py). Returns how many were flagged."""
    ids = sorted({cr.id for crs in rs.recheck_by_type.values() for cr in crs})
    if not ids:
        return 0
    rows = u.all(q.RECHECK_PENDING, rule_ids=ids, resource_key=key)
    u.many(q.TRIGGER_FLAG, [{"flag": UNREAD, "now": now.timestamp(), "id": r.id} for r in rows])
    return len(rows)


def clear_unread(u: UnitOfWork, key: str, now: datetime) -> None:
    """The read showed nothing newer than what is held: the unread flag no longer applies."""
    u.run(q.TRIGGER_CLEAR_FLAG, now=now.timestamp(), resource_key=key, unread=UNREAD)


def _holds(u: UnitOfWork, rule_ids: tuple[str, ...], resource_key: str) -> bool:
    """Has one of these rules a pending or fired trigger for this resource (overlap.exclusive_with)?"""
    return u.scalar(q.TRIGGER_HOLDS, rule_ids=list(rule_ids), resource_key=resource_key) is not None


def _since(c: Cancellation, nowts: float) -> float:
    """Cancellation ``c`` applies to pending triggers created at or after this time."""
    return nowts - c.within_s if c.within_s else _EVER


def _pending_call(cs: list[Cancellation], nowts: float) -> tuple[Query, dict[str, Any]]:
    """One read of the pending triggers the cancellations ``cs`` (one scope) may cancel."""
    return (q.PENDING_FOR_PATIENT if cs[0].same == "patient" else q.PENDING_FOR_RESOURCE,
            {"rule_ids": sorted({c.rule_id for c in cs}), "key": cs[0].key, "since": min(_since(c, nowts) for c in cs)})


def _applies(u: UnitOfWork, c: Cancellation, event_id: int | None, payload: str | None,
             origins: dict[int, dict[str, Any]]) -> bool:
    """Does cancellation ``c`` apply to a trigger (its ``where`` over the trigger's ``%origin`` and
    ``%payload``)? ``origins`` caches the origin resources read for one event."""
    if c.condition is None:
        return True
    eid = event_id or 0
    if eid not in origins:
        body = u.scalar(q.EVENT_RESOURCE, id=eid) if eid else None
        origins[eid] = orjson.loads(body) if body else {}
    return c.applies(origins[eid], orjson.loads(payload or "{}"))


def _cancel(u: UnitOfWork, row: EventRow | EventRecord, now: datetime, result: ChangeResult, only_ids: set[int] | None,
            pending: list[tuple[Cancellation, list[q.PendingTrigger]]]) -> None:
    """Cancel pending triggers at once (visible in /api/triggers before their due time)."""
    nowts = now.timestamp()
    origins: dict[int, dict[str, Any]] = {}
    for c, rows in pending:
        hits = []
        for t in rows:
            if only_ids is not None and t.id not in only_ids:
                continue
            if not _applies(u, c, t.event_id, t.payload, origins):
                continue
            hits.append({"now": nowts, "reason": f"cancelled before its due time: {c.reason} (event {row.id})", "id": t.id})
        u.many(q.TRIGGER_CANCEL, hits)
        result.cancelled += len(hits)


def _record_triggers(
    u: UnitOfWork, ev: ClinicalEvent, row: EventRow | EventRecord, fired: list[Decision], rs: RuleSet, nowts: float,
    result: ChangeResult, cancel_only_ids: set[int] | None, fresh: bool = False,
) -> dict[int, int | None]:
    """Insert each decision as a trigger row (or move the pending one it replaces).

    Three round trips in pipeline mode whatever the number of decisions: the look-ups (the
    pending triggers of the same rules and resource, in one statement, and a duplicate within
    the dedup window), then the moves and inserts. A decision whose dedup key an earlier decision
    of this event has just used is a duplicate of that trigger (as if it had been inserted before
    the look-up). ``fresh``: the event is the first of a resource stored just now, which has no
    pending triggers to look up (see :func:`apply_change`)."""
    plans = []
    calls: list[tuple[Query, dict[str, Any]]] = []
    same_rules: set[str] = set()
    for d in fired:
        status = d.status or TriggerStatus.PENDING
        look_same = status in (TriggerStatus.PENDING, TriggerStatus.SKIPPED) and bool(ev.resource_key) and not fresh
        look_dup = status == TriggerStatus.PENDING and bool(d.dedup_key and d.dedup_window_s)
        if look_same:
            same_rules.add(d.rule_id)
        if look_dup and d.journey_id:  # a journey's steps share its dedup key: only another entry is a duplicate
            calls.append((q.TRIGGER_DUPLICATE_OTHER_ENTRY, {"dedup_key": d.dedup_key, "since": nowts - (d.dedup_window_s or 0),
                                                            "event_id": row.id}))
        elif look_dup:
            calls.append((q.TRIGGER_DUPLICATE, {"dedup_key": d.dedup_key, "since": nowts - (d.dedup_window_s or 0)}))
        plans.append((d, status, look_same, look_dup))
    if same_rules:
        calls.insert(0, (q.SAME_RULE_PENDING, {"rule_ids": sorted(same_rules), "resource_key": ev.resource_key}))
    got = iter(u.fetch(*calls) if calls else [])
    oldest: dict[str, q.SameRuleTrigger] = {}  # rule id -> its oldest pending trigger for this resource
    for t in next(got) if same_rules else []:
        oldest.setdefault(t.rule_id, t)
    inserts: list[tuple[Decision, str, float, dict[str, Any]]] = []
    made: dict[str, int | None] = {}  # dedup key -> id of the pending trigger an earlier decision inserted
    tids: dict[int, int | None] = {}  # id(decision) -> its trigger (inserted or moved)
    patient_id = getattr(row, "patient_id", None) or patient_id_for(u, ev.patient_key, nowts)

    def flush() -> None:
        ids = u.fetch(*((q.TRIGGER_INSERT, params) for _, _, _, params in inserts))
        for (d, status, due, _params), rows in zip(inserts, ids):
            tid = int(rows[0][0]) if rows else None
            tids[id(d)] = tid
            if status == TriggerStatus.PENDING and d.dedup_key and made.get(d.dedup_key, 0) is None:
                made[d.dedup_key] = tid
            if tid is None:  # this rule already made a trigger from this event (reprocessing)
                continue
            result.triggers += 1
            if status == TriggerStatus.PENDING and due <= nowts:
                result.due_now = True
            if cancel_only_ids is not None:
                cancel_only_ids.add(tid)
        inserts.clear()

    for d, status, look_same, look_dup in plans:
        reason = d.reason
        due = d.due_at.timestamp() if d.due_at else nowts
        dup: list[tuple[int]] = next(got) if look_dup else []
        existing = oldest.get(d.rule_id) if look_same else None
        if existing is not None and existing.dedup_key == d.dedup_key and existing.event_id != row.id:
            if status == TriggerStatus.SKIPPED:  # the new time is past or too late: the old reminder must not go out either
                u.send(q.TRIGGER_SKIP, reason=f"{ev.type} (event {row.id}) moved it: {reason}", now=nowts, id=existing.id)
            else:
                u.send(q.TRIGGER_MOVE, due_at=due, payload=dumps(d.payload), now=nowts, id=existing.id,
                       reason=f"moved by {ev.type} (event {row.id}) to {d.due_at.isoformat() if d.due_at else 'now'}")
            result.due_now = result.due_now or (status != TriggerStatus.SKIPPED and due <= nowts)
            tids[id(d)] = int(existing.id)
            if cancel_only_ids is not None:
                cancel_only_ids.add(int(existing.id))
            continue
        if look_dup and d.dedup_key in made and not d.journey_id:  # a journey's steps of one entry share the key
            if made[d.dedup_key] is None:
                flush()  # the id of the earlier decision's trigger names the duplicate
            if made.get(d.dedup_key) is not None:
                dup = [(made[d.dedup_key],)]  # type: ignore[list-item]
        if dup:
            status, reason = TriggerStatus.SKIPPED, f"duplicate of trigger {dup[0][0]} within the dedup window"
        if status == TriggerStatus.PENDING and d.dedup_key and d.dedup_key not in made and not d.journey_id:
            made[d.dedup_key] = None  # id known once inserted
        version = str(((ev.resource.get("meta") or {}).get("versionId")) or row.id)
        inserts.append((d, status, due, dict(
            rule_id=d.rule_id, ruleset_version=rs.version, name=d.trigger or d.rule_id, purpose=d.purpose or "",
            destinations=",".join(d.destinations), patient_key=ev.patient_key, resource_key=ev.resource_key,
            origin_key=f"{d.rule_id}|event:{row.id}", resource_version=version, event_id=row.id, due_at=due,
            status=str(status), reason=reason, dedup_key=d.dedup_key, cancel_scope=d.cancel_scope,
            message_kind=d.message_kind, payload=dumps(d.payload), explain=dumps(d.steps), created_at=nowts,
            updated_at=nowts, patient_id=patient_id, journey_id=d.journey_id, journey_step=d.journey_step)))
    if inserts:
        flush()
    return tids


def merge_patients(u: UnitOfWork, surviving: str, retired: str, now: datetime) -> int:
    """ADT^A40: later events and pending work follow the surviving patient."""
    nowts = now.timestamp()
    surviving = resolve_patient_key(u, surviving) or surviving
    if surviving == retired:
        return 0
    u.run(q.PATIENT_MERGE, retired=retired, surviving=surviving, now=nowts)
    n = u.run(q.STATE_REPOINT, retired=retired, surviving=surviving)
    n += u.run(q.TRIGGER_REPOINT, retired=retired, surviving=surviving)
    patient_id = merge_patient_ids(u, surviving, retired, nowts)  # the survivor keeps its internal id
    u.scalar(q.EVENT_INSERT, type="patient.merged", previous_status=None, status=None, resource_type="Patient",
             resource_key=f"Patient/{retired}", patient_key=surviving, resource=dumps({"retired": retired, "surviving": surviving}),
             source="", arrival="message", occurred_at=nowts, created_at=nowts, inbound_id=None, patient_id=patient_id)
    return n


__all__ = ["apply_change", "merge_patients", "upsert_patient", "resolve_patient_key", "ChangeResult", "StateRow"]
