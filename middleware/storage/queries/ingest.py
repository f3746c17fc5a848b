"""Queries of the ingest and processing hot path: the inbox, patients, resource identity and
state, events, triggers and hospice context; and the records its rows cross the storage
boundary as (one frozen type per row shape)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from .. import tables  # noqa: F401  (registers the tables on the metadata)
from ..sql import any_of, param, query
from ..statuses import InboundStatus, TriggerStatus

T = SQLModel.metadata.tables
inbound = T["inbound_message"]
patient = T["patient"]
identity = T["resource_identity"]
state = T["resource_state"]
event = T["event"]
trigger = T["trigger"]
kv = T["kv"]


def _insert(dialect: str, table: Any) -> Any:
    """The dialect's INSERT (the one with ``on_conflict_do_*``)."""
    return (sqlite if dialect == "sqlite" else postgresql).insert(table)


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """A new ``inbound_message`` row, as a listener hands it to the inbox writer."""

    source: str
    channel: str
    raw: bytes
    sha256: str
    status: str
    received_at: float = field(default_factory=time.time)
    dedup_key: str | None = None
    control_id: str | None = None
    message_type: str | None = None
    error: str | None = None
    ack: bytes | None = None
    meta: str | None = None


class InboundItem(NamedTuple):
    """A claimed ``inbound_message`` row, as the processor hands it to a handler."""

    id: int | None
    source: str
    channel: str
    raw: bytes
    meta: str | None = None


class PatientLink(NamedTuple):
    """Where a patient key was merged to (``None``: it survives) and its stored resource JSON."""

    merged_into: str | None
    resource: str
    patient_id: str | None = None  # careloop's internal id of this key, when one was issued


class StateRecord(NamedTuple):
    """One ``resource_state`` row."""

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


class EventRecord(NamedTuple):
    """One ``event`` row (as just inserted)."""

    id: int
    type: str
    previous_status: str | None
    status: str | None
    resource_type: str
    resource_key: str
    patient_key: str | None
    resource: str
    source: str
    arrival: str
    occurred_at: float
    created_at: float
    inbound_id: int | None
    patient_id: str | None = None  # careloop's internal patient id (storage/patient_ids.py)


class PendingTrigger(NamedTuple):
    id: int
    event_id: int | None
    payload: str
    rule_id: str
    created_at: float


class SameRuleTrigger(NamedTuple):
    id: int
    dedup_key: str | None
    event_id: int | None
    rule_id: str


class Identity(NamedTuple):
    identifier: str
    resource_key: str


# -- the inbox ------------------------------------------------------------------------------

INBOX_COLUMNS = ("source", "channel", "received_at", "raw", "sha256", "dedup_key", "control_id", "message_type",
                 "status", "error", "ack", "meta")

INBOX_INSERT = query("inbox.insert", inbound.insert().values({c: param(c) for c in INBOX_COLUMNS}))


class Seen(NamedTuple):
    dedup_key: str
    sha256: str
    ack: bytes | None


INBOX_SEEN = query("inbox.seen", select(inbound.c.dedup_key, inbound.c.sha256, inbound.c.ack)
                   .where(any_of(inbound.c.dedup_key, "keys"), inbound.c.status != InboundStatus.DUPLICATE), Seen)

#: which of ``keys`` the inbox already holds as a message it keeps (not a duplicate, not failed)
INBOX_HELD = query("inbox.held", select(inbound.c.dedup_key).where(
    any_of(inbound.c.dedup_key, "keys"), inbound.c.status != InboundStatus.DUPLICATE,
    inbound.c.status != InboundStatus.FAILED))

_received = (select(inbound.c.id, inbound.c.source, inbound.c.channel, inbound.c.raw, inbound.c.meta)
             .where(inbound.c.status == InboundStatus.RECEIVED).order_by(inbound.c.id).limit(param("n")))
#: the oldest stored messages not yet processed (a read, for prefetching)
INBOX_NEXT = query("inbox.next", _received, InboundItem)
#: the same, claimed: rows another worker holds are skipped (PostgreSQL)
INBOX_CLAIM = query("inbox.claim", _received.with_for_update(skip_locked=True), InboundItem)
INBOX_DONE = query("inbox.done", inbound.update().where(inbound.c.id == param("id")).values(
    status=param("status"), error=param("error"), attempts=inbound.c.attempts + 1, processed_at=param("processed_at")))

# -- patients and identity ------------------------------------------------------------------

_identifier = T["patient_identifier"]
PATIENT_LINK = query("ingest.patient_link", select(patient.c.merged_into, patient.c.resource, _identifier.c.patient_id)
                     .select_from(patient.outerjoin(_identifier, _identifier.c.patient_key == patient.c.key))
                     .where(patient.c.key == param("key")), PatientLink)
PATIENT_RESOURCE = query("ingest.patient_resource", select(patient.c.resource).where(patient.c.key == param("key")))


def _patient_upsert(dialect: str) -> Any:
    """Store the patient unless a later version is already held (one statement)."""
    ins = _insert(dialect, patient).values(key=param("key"), fhir_id=param("fhir_id"), resource=param("resource"),
                                            merged_into=None, updated_at=param("now"), occurred_at=param("occurred_at"))
    ex = ins.excluded
    return ins.on_conflict_do_update(
        index_elements=[patient.c.key],
        set_={"resource": ex.resource, "fhir_id": func.coalesce(param("new_fhir_id"), patient.c.fhir_id),
              "occurred_at": ex.occurred_at, "updated_at": ex.updated_at},
        where=ex.occurred_at >= patient.c.occurred_at)


PATIENT_UPSERT = query("ingest.patient_upsert", _patient_upsert)


def _patient_merge(dialect: str) -> Any:
    ins = _insert(dialect, patient).values(key=param("retired"), fhir_id="", resource="{}", merged_into=param("surviving"),
                                            updated_at=param("now"), occurred_at=0.0)
    return ins.on_conflict_do_update(index_elements=[patient.c.key],
                                     set_={"merged_into": ins.excluded.merged_into, "updated_at": ins.excluded.updated_at})


PATIENT_MERGE = query("ingest.patient_merge", _patient_merge)
STATE_REPOINT = query("ingest.state_repoint", state.update().where(state.c.patient_key == param("retired"))
                      .values(patient_key=param("surviving")))
TRIGGER_REPOINT = query("ingest.trigger_repoint", trigger.update().where(trigger.c.patient_key == param("retired"))
                        .values(patient_key=param("surviving")))

IDENTITY_GET = query("ingest.identity_get", select(identity.c.resource_key).where(identity.c.identifier == param("identifier")))
IDENTITY_ANY = query("ingest.identity_any", select(identity.c.identifier, identity.c.resource_key)
                     .where(any_of(identity.c.identifier, "identifiers")), Identity)
IDENTITY_ADD = query("ingest.identity_add", identity.insert().values(identifier=param("identifier"), resource_key=param("key")))


def _identity_remember(dialect: str) -> Any:
    return (_insert(dialect, identity).values(identifier=param("identifier"), resource_key=param("key"))
            .on_conflict_do_nothing(index_elements=[identity.c.identifier]))


IDENTITY_REMEMBER = query("ingest.identity_remember", _identity_remember)

# -- resource state -------------------------------------------------------------------------

STATE_COLUMNS = StateRecord._fields
STATE_GET = query("ingest.state_get", select(*(state.c[f] for f in STATE_COLUMNS)).where(state.c.key == param("key")),
                  StateRecord)
STATE_INSERT = query("ingest.state_insert", state.insert().values({f: param(f) for f in STATE_COLUMNS}))
STATE_UPDATE = query("ingest.state_update", state.update().where(state.c.key == param("key"))
                     .values({f: param(f) for f in STATE_COLUMNS if f != "key"}))
#: the patient's current Encounters and CarePlans (hospice care)
CARE_RESOURCES = query("ingest.care_resources", select(state.c.resource).where(
    state.c.patient_key == param("patient_key"), state.c.resource_type.in_(["Encounter", "CarePlan"]),
    state.c.deleted.is_(False)))

# -- events ---------------------------------------------------------------------------------

EVENT_COLUMNS = EventRecord._fields[1:]
EVENT_INSERT = query("ingest.event_insert", event.insert().values({f: param(f) for f in EVENT_COLUMNS})
                     .returning(event.c.id))
EVENT_RESOURCE = query("ingest.event_resource", select(event.c.resource).where(event.c.id == param("id")))

# -- triggers -------------------------------------------------------------------------------

#: the pending triggers of several rules an event's cancellations may cancel, one statement for all of
#: them (each cancellation keeps the rows of its own rule created since its own window start)
_pending = select(trigger.c.id, trigger.c.event_id, trigger.c.payload, trigger.c.rule_id, trigger.c.created_at).where(
    any_of(trigger.c.rule_id, "rule_ids"), trigger.c.status == TriggerStatus.PENDING,
    trigger.c.created_at >= param("since")).order_by(trigger.c.id)
PENDING_FOR_PATIENT = query("ingest.pending_for_patient", _pending.where(trigger.c.patient_key == param("key")), PendingTrigger)
PENDING_FOR_RESOURCE = query("ingest.pending_for_resource", _pending.where(trigger.c.resource_key == param("key")),
                             PendingTrigger)
TRIGGER_CANCEL = query("ingest.trigger_cancel", trigger.update().where(trigger.c.id == param("id"))
                       .values(status=TriggerStatus.CANCELLED, updated_at=param("now"), reason=param("reason")))
#: the pending triggers of several rules for one resource, oldest first (the first of each rule is
#: the one a new decision of that rule moves or replaces)
SAME_RULE_PENDING = query("ingest.same_rule_pending", select(
    trigger.c.id, trigger.c.dedup_key, trigger.c.event_id, trigger.c.rule_id).where(
    any_of(trigger.c.rule_id, "rule_ids"), trigger.c.resource_key == param("resource_key"),
    trigger.c.status == TriggerStatus.PENDING).order_by(trigger.c.id), SameRuleTrigger)
TRIGGER_SKIP = query("ingest.trigger_skip", trigger.update().where(trigger.c.id == param("id"))
                     .values(status=TriggerStatus.SKIPPED, reason=param("reason"), updated_at=param("now")))
TRIGGER_MOVE = query("ingest.trigger_move", trigger.update().where(trigger.c.id == param("id"))
                     .values(due_at=param("due_at"), payload=param("payload"), reason=param("reason"), updated_at=param("now")))
_duplicate = select(trigger.c.id).where(
    trigger.c.dedup_key == param("dedup_key"), trigger.c.status.in_([TriggerStatus.PENDING, TriggerStatus.FIRED]),
    trigger.c.created_at >= param("since"))
TRIGGER_DUPLICATE = query("ingest.trigger_duplicate", _duplicate.limit(1))
#: a journey's steps share its dedup key: only another entry (another event) is a duplicate
TRIGGER_DUPLICATE_OTHER_ENTRY = query("ingest.trigger_duplicate_other_entry",
                                      _duplicate.where(trigger.c.event_id != param("event_id")).limit(1))


class RecheckTrigger(NamedTuple):
    id: int
    rule_id: str
    event_id: int | None
    flag: str | None


RECHECK_PENDING = query("ingest.recheck_pending", select(trigger.c.id, trigger.c.rule_id, trigger.c.event_id, trigger.c.flag)
                        .where(any_of(trigger.c.rule_id, "rule_ids"), trigger.c.resource_key == param("resource_key"),
                               trigger.c.status == TriggerStatus.PENDING), RecheckTrigger)
TRIGGER_FLAG = query("ingest.trigger_flag", trigger.update().where(trigger.c.id == param("id"))
                     .values(flag=param("flag"), updated_at=param("now")))
TRIGGER_CLEAR_FLAG = query("ingest.trigger_clear_flag", trigger.update().where(
    trigger.c.resource_key == param("resource_key"), trigger.c.status == TriggerStatus.PENDING,
    trigger.c.flag == param("unread")).values(flag=None, updated_at=param("now")))
TRIGGER_HOLDS = query("ingest.trigger_holds", select(trigger.c.id).where(
    any_of(trigger.c.rule_id, "rule_ids"), trigger.c.resource_key == param("resource_key"),
    trigger.c.status.in_([TriggerStatus.PENDING, TriggerStatus.FIRED])).limit(1))
TRIGGER_COLUMNS = ("rule_id", "ruleset_version", "name", "purpose", "destinations", "patient_key", "resource_key",
                   "origin_key", "resource_version", "event_id", "due_at", "status", "reason", "dedup_key",
                   "cancel_scope", "message_kind", "payload", "explain", "created_at", "updated_at", "patient_id", "journey_id",
                   "journey_step")


def _trigger_insert(dialect: str) -> Any:
    """A rule's decision as a trigger row; nothing when this rule already made one from this event."""
    return (_insert(dialect, trigger).values({c: param(c) for c in TRIGGER_COLUMNS})
            .on_conflict_do_nothing(index_elements=[trigger.c.origin_key]).returning(trigger.c.id))


TRIGGER_INSERT = query("ingest.trigger_insert", _trigger_insert)

# -- kv (defined in kv.py; the FHIR listener's watermarks use them through this module too) --

from .kv import KV_DELETE_UNTIL as KV_DELETE_UNTIL, KV_GET as KV_GET, KV_PREFIX as KV_PREFIX, KV_PUT as KV_PUT  # noqa: E402
