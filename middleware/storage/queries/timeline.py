"""A patient's timeline (``api/patients.py``, the console's ``/patients`` pages): every read is an
index look-up by careloop's internal patient id, or by ids found that way, in bounded pages.

* events and triggers: ``patient_id = ? AND id < ? ORDER BY id DESC LIMIT ?`` (indexes
  ``ix_event_patient_id`` / ``ix_trigger_patient_id``); the cursor is always bound (a value past
  every id on the first page), so each page is one index range scan on both backends;
* the messages, deliveries and outcome entries of a page: by primary key, ``delivery.trigger_id``
  and ``outcome.patient_key`` (``ix_outcome_patient``) -- the patient's keys come from
  ``patient_identifier`` by id (every key of a merged-away patient points at the survivor);
* the ids merged into a survivor: ``patient_identity.merged_into`` (indexed);
* recently active patients: the newest events by primary key, keyset on the event id; no COUNT.

Rows never carry an identifier to the page: patient keys (``system|MRN``) are read only to find
outcome entries and, for an audited reveal, the stored Patient resources.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import select

from ..sql import UnitOfWork, any_of, param, query
from ._tables import DELIVERY, EVENT, INBOUND, PATIENT, TRIGGER, table

IDENTITY = table("patient_identity")
IDENTIFIER = table("patient_identifier")
OUTCOME = table("outcome")

#: the first page's cursor: past every id (ids are 64-bit at most)
NO_CURSOR = 2**62
#: a patient's keys read at once (a person has a handful; merges add one each)
MAX_KEYS = 200


class Identity(NamedTuple):
    id: str
    merged_into: str | None
    created_at: float
    merged_at: float | None


class TimelineEvent(NamedTuple):
    id: int
    type: str
    previous_status: str | None
    status: str | None
    resource_type: str
    resource_key: str
    source: str
    arrival: str
    occurred_at: float
    created_at: float
    inbound_id: int | None


class TimelineTrigger(NamedTuple):
    id: int
    rule_id: str
    ruleset_version: str
    name: str
    purpose: str
    destinations: str
    event_id: int | None
    status: str
    reason: str | None
    due_at: float
    created_at: float
    updated_at: float
    fired_at: float | None
    journey_id: str | None
    journey_step: int | None
    flag: str | None
    explain: str | None


class TimelineMessage(NamedTuple):
    id: int
    source: str
    channel: str
    received_at: float
    message_type: str | None
    control_id: str | None
    status: str
    error: str | None


class TimelineDelivery(NamedTuple):
    id: int
    trigger_id: int
    destination: str
    status: str
    attempts: int
    last_error: str | None
    last_status_code: int | None
    created_at: float
    updated_at: float
    delivered_at: float | None


class TimelineOutcome(NamedTuple):
    id: int
    goal_id: str
    rule_id: str
    journey_id: str | None
    trigger_id: int | None
    origin_event_id: int | None
    experiment: str | None
    period: str | None
    arm: str | None
    delivered: bool
    status: str
    achieved_at: float | None
    window_closes: float | None
    created_at: float
    updated_at: float


class PatientResource(NamedTuple):
    key: str
    resource: str
    merged_into: str | None


class RecentEvent(NamedTuple):
    id: int
    patient_id: str
    created_at: float


def _cols(t: Any, row: Any) -> list[Any]:
    return [t.c[f] for f in row._fields]


IDENTITY_OF = query("timeline.identity", select(*_cols(IDENTITY, Identity)).where(IDENTITY.c.id == param("pid")), Identity)
MERGED_INTO = query("timeline.merged_into", select(*_cols(IDENTITY, Identity)).where(IDENTITY.c.merged_into == param("pid"))
                    .order_by(IDENTITY.c.merged_at, IDENTITY.c.id).limit(MAX_KEYS), Identity)
KEYS = query("timeline.keys", select(IDENTIFIER.c.patient_key).where(IDENTIFIER.c.patient_id == param("pid"))
             .order_by(IDENTIFIER.c.patient_key).limit(MAX_KEYS))
EVENTS = query("timeline.events", select(*_cols(EVENT, TimelineEvent))
               .where(EVENT.c.patient_id == param("pid"), EVENT.c.id < param("before"))
               .order_by(EVENT.c.patient_id.desc(), EVENT.c.id.desc()).limit(param("limit")), TimelineEvent)
TRIGGERS = query("timeline.triggers", select(*_cols(TRIGGER, TimelineTrigger))
                 .where(TRIGGER.c.patient_id == param("pid"), TRIGGER.c.id < param("before"))
                 .order_by(TRIGGER.c.patient_id.desc(), TRIGGER.c.id.desc()).limit(param("limit")), TimelineTrigger)
MESSAGES = query("timeline.messages", select(*_cols(INBOUND, TimelineMessage)).where(any_of(INBOUND.c.id, "ids")),
                 TimelineMessage)
DELIVERIES = query("timeline.deliveries", select(*_cols(DELIVERY, TimelineDelivery))
                   .where(any_of(DELIVERY.c.trigger_id, "ids")).order_by(DELIVERY.c.id), TimelineDelivery)
OUTCOMES = query("timeline.outcomes", select(*_cols(OUTCOME, TimelineOutcome))
                 .where(any_of(OUTCOME.c.patient_key, "keys"), OUTCOME.c.id < param("before"))
                 .order_by(OUTCOME.c.id.desc()).limit(param("limit")), TimelineOutcome)
PATIENTS = query("timeline.patient_resources", select(PATIENT.c.key, PATIENT.c.resource, PATIENT.c.merged_into)
                 .where(any_of(PATIENT.c.key, "keys")).order_by(PATIENT.c.key), PatientResource)
BY_KEYS = query("timeline.ids_of_keys", select(IDENTIFIER.c.patient_key, IDENTIFIER.c.patient_id)
                .where(any_of(IDENTIFIER.c.patient_key, "keys")).order_by(IDENTIFIER.c.patient_key))
RECENT = query("timeline.recent", select(EVENT.c.id, EVENT.c.patient_id, EVENT.c.created_at)
               .where(EVENT.c.id < param("before"), EVENT.c.patient_id.is_not(None))
               .order_by(EVENT.c.id.desc()).limit(param("limit")), RecentEvent)


def identity(u: UnitOfWork, pid: str) -> Identity | None:
    row: Identity | None = u.one(IDENTITY_OF, pid=pid)
    return row


def merged_into(u: UnitOfWork, pid: str) -> list[Identity]:
    """The ids recorded as merged into ``pid`` (flattened at each merge: one hop finds them all)."""
    rows: list[Identity] = u.all(MERGED_INTO, pid=pid)
    return rows


def keys_of(u: UnitOfWork, pid: str) -> list[str]:
    """Every patient key that points at ``pid`` (identifiers: never shown without a reveal)."""
    return [str(k) for (k,) in u.all(KEYS, pid=pid)]


def events(u: UnitOfWork, pid: str, before: int | None, limit: int) -> list[TimelineEvent]:
    rows: list[TimelineEvent] = u.all(EVENTS, pid=pid, before=before or NO_CURSOR, limit=limit)
    return rows


def triggers(u: UnitOfWork, pid: str, before: int | None, limit: int) -> list[TimelineTrigger]:
    rows: list[TimelineTrigger] = u.all(TRIGGERS, pid=pid, before=before or NO_CURSOR, limit=limit)
    return rows


def messages(u: UnitOfWork, ids: list[int]) -> list[TimelineMessage]:
    rows: list[TimelineMessage] = u.all(MESSAGES, ids=ids) if ids else []
    return rows


def deliveries(u: UnitOfWork, trigger_ids: list[int]) -> list[TimelineDelivery]:
    rows: list[TimelineDelivery] = u.all(DELIVERIES, ids=trigger_ids) if trigger_ids else []
    return rows


def outcomes(u: UnitOfWork, keys: list[str], before: int | None, limit: int) -> list[TimelineOutcome]:
    rows: list[TimelineOutcome] = u.all(OUTCOMES, keys=keys, before=before or NO_CURSOR, limit=limit) if keys else []
    return [r._replace(delivered=bool(r.delivered)) for r in rows]


def patient_resources(u: UnitOfWork, keys: list[str]) -> list[PatientResource]:
    rows: list[PatientResource] = u.all(PATIENTS, keys=keys) if keys else []
    return rows


def ids_of_keys(u: UnitOfWork, keys: list[str]) -> dict[str, str]:
    """patient key -> internal id, for the keys careloop knows."""
    return {str(k): str(p) for k, p in u.all(BY_KEYS, keys=keys)} if keys else {}


def recent(u: UnitOfWork, before: int | None, limit: int) -> list[RecentEvent]:
    rows: list[RecentEvent] = u.all(RECENT, before=before or NO_CURSOR, limit=limit)
    return rows
