"""SQLModel tables. Times are UNIX epoch seconds (float) so SQLite and PostgreSQL compare alike;
JSON is stored as text (orjson) so the hot paths avoid a JSON type adapter."""
from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import CheckConstraint, Column, Index, LargeBinary, Text, UniqueConstraint, false, text, true
from sqlmodel import Field, SQLModel

from .statuses import DeliveryStatus, DisclosureOutcome, HoldoutArm, InboundStatus, OutcomeStatus, TriggerStatus, one_of

#: Stable names for every constraint and index, set before any table is declared (and before the
#: first migration): migrations refer to constraints by these names on both dialects. ``ix`` is
#: SQLAlchemy's own default, so the names of ``index=True`` columns are those of release 0.1.0;
#: explicitly named indexes and constraints keep their names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


def server(default: object) -> dict[str, Any]:
    """``sa_column_kwargs`` giving a column the server default ``default`` (the model's own), so a
    statement that leaves the column out stores what the ORM would have."""
    if isinstance(default, bool):
        return {"server_default": true() if default else false()}
    if isinstance(default, (int, float)):
        return {"server_default": text(repr(int(default)) if float(default).is_integer() else repr(default))}
    return {"server_default": str(default)}


class InboundMessage(SQLModel, table=True):
    """Every inbound payload as received, before anything else happens to it."""

    __tablename__ = "inbound_message"
    __table_args__ = (
        Index("ix_inbound_status_id", "status", "id"),
        Index("ix_inbound_dedup", "dedup_key", "sha256"),
        Index("ix_inbound_received", "received_at"),
        # the console's message browser (issue 15): each filter an index range in id order (keyset pages)
        Index("ix_inbound_source_type_id", "source", "message_type", "id"),
        Index("ix_inbound_control_id", "control_id", "id"),
        CheckConstraint(one_of("status", InboundStatus), name="status"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    channel: str = Field(max_length=16)  # mllp | http | fhir
    received_at: float
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=True))
    sha256: str = Field(max_length=64)
    dedup_key: Optional[str] = Field(default=None, max_length=400)
    control_id: Optional[str] = Field(default=None, max_length=200)
    message_type: Optional[str] = Field(default=None, max_length=64)
    status: str = Field(default="received", max_length=16, sa_column_kwargs=server("received"))  # statuses.InboundStatus
    error: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    ack: Optional[bytes] = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    meta: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    processed_at: Optional[float] = None
    attempts: int = Field(default=0, sa_column_kwargs=server(0))


class PatientRow(SQLModel, table=True):
    """The last known Patient resource per patient key ("system|value" of the MRN, as normalize
    keys it); ``merged_into`` points a merged-away key at its survivor (ADT^A40 and kin)."""

    __tablename__ = "patient"
    key: str = Field(primary_key=True, max_length=300)
    fhir_id: str = Field(max_length=64)
    resource: str = Field(sa_column=Column(Text, nullable=False))
    merged_into: Optional[str] = Field(default=None, max_length=300, index=True)
    updated_at: float = Field(default=0.0, sa_column_kwargs=server(0.0))
    occurred_at: float = Field(default=0.0, sa_column_kwargs=server(0.0))


class PatientIdentity(SQLModel, table=True):
    """careloop's stable internal patient id (``storage/patient_ids.py``): random, never derived
    from an identifier, never sent to a destination. A merged-away id keeps its row with
    ``merged_into`` naming the surviving id, so links made before the merge still resolve."""

    __tablename__ = "patient_identity"
    id: str = Field(primary_key=True, max_length=40)  # "pt_" + 26 base32 characters (128 random bits)
    merged_into: Optional[str] = Field(default=None, max_length=40, index=True)
    created_at: float
    merged_at: Optional[float] = None


class PatientIdentifier(SQLModel, table=True):
    """Every patient key careloop has seen -> the internal id of its (surviving) patient."""

    __tablename__ = "patient_identifier"
    patient_key: str = Field(primary_key=True, max_length=300)
    patient_id: str = Field(max_length=40, index=True)
    created_at: float


class ResourceState(SQLModel, table=True):
    """The last known version of each Appointment / Encounter / CarePlan."""

    __tablename__ = "resource_state"
    __table_args__ = (Index("ix_resource_patient", "patient_key", "resource_type"),)
    key: str = Field(primary_key=True, max_length=200)  # "Appointment/a-1f2e..."
    resource_type: str = Field(max_length=32)
    patient_key: Optional[str] = Field(default=None, max_length=300)
    status: Optional[str] = Field(default=None, max_length=32)
    version: Optional[str] = Field(default=None, max_length=64)
    last_updated: Optional[str] = Field(default=None, max_length=40)
    occurred_at: float = Field(default=0.0, sa_column_kwargs=server(0.0))
    resource: str = Field(sa_column=Column(Text, nullable=False))
    source: str = Field(max_length=64)
    deleted: bool = Field(default=False, sa_column_kwargs=server(False))
    updated_at: float = Field(default=0.0, sa_column_kwargs=server(0.0))


class ResourceIdentity(SQLModel, table=True):
    """Business identifier ("system|value") -> resource key, so sources agree on identity."""

    __tablename__ = "resource_identity"
    identifier: str = Field(primary_key=True, max_length=400)
    resource_key: str = Field(max_length=200, index=True)


class EventRow(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_patient", "patient_key", "id"),
        Index("ix_event_resource", "resource_key", "id"),
        Index("ix_event_created", "created_at"),  # retention windows
        Index("ix_event_patient_id", "patient_id", "id"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    type: str = Field(max_length=64, index=True)
    previous_status: Optional[str] = Field(default=None, max_length=32)
    status: Optional[str] = Field(default=None, max_length=32)
    resource_type: str = Field(max_length=32)
    resource_key: str = Field(max_length=200)
    patient_key: Optional[str] = Field(default=None, max_length=300)
    resource: str = Field(sa_column=Column(Text, nullable=False))
    source: str = Field(max_length=64)
    arrival: str = Field(max_length=16)  # message | notification | reconcile | backfill
    occurred_at: float
    created_at: float
    inbound_id: Optional[int] = Field(default=None, index=True)
    patient_id: Optional[str] = Field(default=None, max_length=40)  # internal id (PatientIdentity), stamped at write time


class TriggerRow(SQLModel, table=True):
    """A rule's decision to contact a patient, pending until its due time."""

    __tablename__ = "trigger"
    __table_args__ = (
        Index("ix_trigger_due", "status", "due_at"),
        Index("ix_trigger_patient", "patient_key", "status"),
        Index("ix_trigger_dedup", "dedup_key", "created_at"),
        Index("ix_trigger_rule_resource", "rule_id", "resource_key", "status"),
        Index("ix_trigger_updated", "updated_at"),  # retention windows
        Index("ix_trigger_patient_id", "patient_id", "id"),
        UniqueConstraint("origin_key", name="uq_trigger_origin"),
        CheckConstraint(one_of("status", TriggerStatus), name="status"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    rule_id: str = Field(max_length=128)
    ruleset_version: str = Field(max_length=64)
    name: str = Field(max_length=128)
    purpose: str = Field(max_length=32)
    destinations: str = Field(max_length=400)  # comma-separated destination names
    patient_key: Optional[str] = Field(default=None, max_length=300)
    resource_key: Optional[str] = Field(default=None, max_length=200)
    origin_key: str = Field(max_length=400)  # rule + event: reprocessing never doubles a trigger
    resource_version: Optional[str] = Field(default=None, max_length=64)
    event_id: Optional[int] = None
    due_at: float
    status: str = Field(default="pending", max_length=16, sa_column_kwargs=server("pending"))  # statuses.TriggerStatus
    reason: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    dedup_key: Optional[str] = Field(default=None, max_length=400)
    cancel_scope: Optional[str] = Field(default=None, max_length=400)
    message_kind: Optional[str] = Field(default=None, max_length=64)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    explain: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: float
    updated_at: float
    fired_at: Optional[float] = None
    patient_id: Optional[str] = Field(default=None, max_length=40)  # internal id (PatientIdentity), stamped at write time
    journey_id: Optional[str] = Field(default=None, max_length=128)  # the journey of a step rule (rules/journeys.py)
    journey_step: Optional[int] = None  # 1-based step in the journey
    flag: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))  # kept, not re-checked: why


class DeliveryRow(SQLModel, table=True):
    """One trigger to one destination; durable retry state."""

    __tablename__ = "delivery"
    __table_args__ = (
        Index("ix_delivery_due", "status", "next_attempt_at"),
        Index("ix_delivery_confirm", "confirmation", "next_attempt_at"),  # exits awaiting the vendor's confirmation
        UniqueConstraint("idempotency_key", name="uq_delivery_idem"),
        CheckConstraint(one_of("status", DeliveryStatus), name="status"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    trigger_id: int = Field(index=True)
    destination: str = Field(max_length=64, index=True)
    idempotency_key: str = Field(max_length=128)
    status: str = Field(default="pending", max_length=16, sa_column_kwargs=server("pending"))  # statuses.DeliveryStatus
    attempts: int = Field(default=0, sa_column_kwargs=server(0))
    next_attempt_at: float
    last_error: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    last_status_code: Optional[int] = None
    created_at: float
    updated_at: float
    delivered_at: Optional[float] = None
    locked_until: Optional[float] = None
    # added for issue 6: "host:pid:nonce" of the worker holding the lease (a dead local owner is reclaimed at once)
    locked_by: Optional[str] = Field(default=None, max_length=200)
    # added for issue 17: exits, and what the vendor's answer proves
    kind: str = Field(default="entry", max_length=8, sa_column_kwargs=server("entry"))  # statuses.DeliveryKind
    confirmation: Optional[str] = Field(default=None, max_length=16)  # statuses.Confirmation; NULL: final answer
    vendor_ref: Optional[str] = Field(default=None, max_length=200)  # the vendor's id for it (eventInstanceId, ...)
    confirm_by: Optional[float] = None  # a pending confirmation turns unconfirmed (alert) after this
    confirmed_at: Optional[float] = None


class DeliveryAttempt(SQLModel, table=True):
    __tablename__ = "delivery_attempt"
    id: Optional[int] = Field(default=None, primary_key=True)
    delivery_id: int = Field(index=True)
    at: float
    outcome: str = Field(max_length=16)
    status_code: Optional[int] = None
    error: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))
    duration_ms: float = Field(default=0.0, sa_column_kwargs=server(0.0))


class Disclosure(SQLModel, table=True):
    """Append-only accounting of every disclosure: who got which fields, and a hash of the bytes."""

    __tablename__ = "disclosure"
    __table_args__ = (
        Index("ix_disclosure_patient", "patient_key", "sent_at"),
        CheckConstraint(one_of("outcome", DisclosureOutcome), name="outcome"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    delivery_id: int
    trigger_id: int
    patient_key: Optional[str] = Field(default=None, max_length=300)
    destination: str = Field(max_length=64)
    fields: str = Field(sa_column=Column(Text, nullable=False))
    body_sha256: str = Field(max_length=64)
    purpose: str = Field(max_length=32)
    rule_id: str = Field(max_length=128)
    ruleset_version: str = Field(max_length=64)
    sent_at: float
    # added for issue 6 (nullable, so older databases gain them with ALTER TABLE ADD COLUMN):
    outcome: Optional[str] = Field(default=None, max_length=16)  # delivered | unconfirmed
    body_bytes: Optional[int] = None  # length of the exact request body that carried it
    request_target: Optional[str] = Field(default=None, max_length=200)  # "POST /v1/track" (no host, no query)
    attempt: Optional[int] = None


class SendLedger(SQLModel, table=True):
    """Idempotency keys already accepted by destinations without native de-duplication."""

    __tablename__ = "send_ledger"
    idempotency_key: str = Field(primary_key=True, max_length=128)
    destination: str = Field(max_length=64)
    sent_at: float


class SendIntent(SQLModel, table=True):
    """A send that began but whose outcome is not yet recorded (destinations without de-duplication).

    Written when a delivery is claimed, removed when its outcome is recorded. Finding one when a
    delivery is claimed again means the worker stopped after sending began: the send ledger rule
    is then "do not send twice" and the delivery becomes ``unconfirmed``.
    """

    __tablename__ = "send_intent"
    idempotency_key: str = Field(primary_key=True, max_length=128)
    delivery_id: int = Field(index=True)
    destination: str = Field(max_length=64)
    started_at: float


class ConsentRecord(SQLModel, table=True):
    """A FHIR Consent resource for a patient (posted to the API or delivered by a FHIR source)."""

    __tablename__ = "consent"
    __table_args__ = (Index("ix_consent_patient", "patient_key", "status"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    patient_key: str = Field(max_length=300)
    fhir_id: Optional[str] = Field(default=None, max_length=64, index=True)
    status: str = Field(max_length=32)
    resource: str = Field(sa_column=Column(Text, nullable=False))
    source: str = Field(default="api", max_length=64, sa_column_kwargs=server("api"))
    received_at: float
    updated_at: float


class DeliveryAlert(SQLModel, table=True):
    """An operator alert (e.g. a destination refused static credentials and its circuit opened)."""

    __tablename__ = "delivery_alert"
    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)  # auth-failure | destination-disabled
    destination: str = Field(max_length=64, index=True)
    delivery_id: Optional[int] = None
    message: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float
    resolved_at: Optional[float] = None


class Suppression(SQLModel, table=True):
    """Opt-outs: STOP replies, unsubscribes, revocations (patient-wide or per destination/purpose)."""

    __tablename__ = "suppression"
    id: Optional[int] = Field(default=None, primary_key=True)
    patient_key: str = Field(max_length=300, index=True)
    destination: Optional[str] = Field(default=None, max_length=64)
    purpose: Optional[str] = Field(default=None, max_length=32)
    reason: str = Field(max_length=200)
    created_at: float
    revoked_at: Optional[float] = None
    source: Optional[str] = Field(default=None, max_length=64)  # sms-stop | unsubscribe | revocation | operator


class Authorization(SQLModel, table=True):
    """Recorded marketing authorizations (prior express written consent)."""

    __tablename__ = "authorization"
    id: Optional[int] = Field(default=None, primary_key=True)
    patient_key: str = Field(max_length=300, index=True)
    purpose: str = Field(default="marketing", max_length=32, sa_column_kwargs=server("marketing"))
    reference: Optional[str] = Field(default=None, max_length=200)
    granted_at: float
    revoked_at: Optional[float] = None


class KeyValue(SQLModel, table=True):
    """Small durable state: reconciliation high-water marks, rule-set version, counters."""

    __tablename__ = "kv"
    key: str = Field(primary_key=True, max_length=200)
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float = Field(default=0.0, sa_column_kwargs=server(0.0))


class AdminAudit(SQLModel, table=True):
    """Append-only record of every admin action (reload, replay, resume, suppressions,
    authorizations, consents, retention runs, contact-key exports, auth throttling).

    Targets are ids, names or pseudonymous keys only, never PHI. ORM updates and deletes
    raise (``delivery/admin_audit.guard_admin_audit``); retention never touches it.
    """

    __tablename__ = "admin_audit"
    __table_args__ = (
        Index("ix_admin_audit_at", "at", "id"),
        Index("ix_admin_audit_action", "action", "id"),
        Index("ix_admin_audit_actor", "actor", "id"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    at: float
    actor: str = Field(max_length=100)  # API token name, OS user (CLI), or "careloop" (the service itself)
    role: Optional[str] = Field(default=None, max_length=32)
    channel: str = Field(max_length=8)  # api | cli | service
    action: str = Field(max_length=64)  # e.g. deliveries.replay, suppression.add, contact_keys.export
    target_kind: Optional[str] = Field(default=None, max_length=32)
    target_id: Optional[str] = Field(default=None, max_length=300)
    reason: Optional[str] = Field(default=None, max_length=200)
    client: Optional[str] = Field(default=None, max_length=64)  # client address (API calls)
    outcome: str = Field(max_length=16)  # ok | refused | error
    request_id: Optional[str] = Field(default=None, max_length=64)
    detail: Optional[str] = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON: counts, filters


class HoldoutAssignment(SQLModel, table=True):
    """A patient's arm in one experiment period, decided once (keyed HMAC of the internal
    patient id, the experiment and the period's salt) and never changed by rule edits."""

    __tablename__ = "holdout_assignment"
    __table_args__ = (CheckConstraint(one_of("arm", HoldoutArm), name="arm"),)
    experiment: str = Field(primary_key=True, max_length=128)
    period: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(primary_key=True, max_length=300)
    arm: str = Field(max_length=16)  # statuses.HoldoutArm
    share: float
    assigned_at: float


class OutcomeRow(SQLModel, table=True):
    """The goal of one journey entry (the unit of every report: a patient's entry, not a
    message), recomputed as later events arrive; idempotent by ``entry_key``."""

    __tablename__ = "outcome"
    __table_args__ = (
        UniqueConstraint("entry_key", name="uq_outcome_entry"),
        Index("ix_outcome_patient", "patient_key", "status"),
        Index("ix_outcome_open", "status", "window_closes"),
        # covering indexes of the report's two reads (tallies with their breakdowns, times to goal): index-only,
        # in group order; trigger_id last so the funnel's "triggered" (count of trigger_id) is read from it too
        Index("ix_outcome_report", "goal_id", "experiment", "period", "arm", "status", "delivered", "ruleset_version",
              "destination", "anchor_month", "anchor_week", "stopped", "trigger_id"),
        Index("ix_outcome_elapsed", "goal_id", "experiment", "period", "arm", "status", "elapsed_s"),
        CheckConstraint(one_of("status", OutcomeStatus), name="status"),
        CheckConstraint(one_of("arm", HoldoutArm), name="arm"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    entry_key: str = Field(max_length=400)  # goal + rule/journey + origin resource
    goal_id: str = Field(max_length=128)
    rule_id: str = Field(max_length=128)
    journey_id: Optional[str] = Field(default=None, max_length=128)
    ruleset_version: Optional[str] = Field(default=None, max_length=64)
    patient_key: Optional[str] = Field(default=None, max_length=300)
    patient_id: Optional[str] = Field(default=None, max_length=300)
    origin_event_id: Optional[int] = None
    origin_resource_key: Optional[str] = Field(default=None, max_length=200)
    trigger_id: Optional[int] = Field(default=None, index=True)
    experiment: Optional[str] = Field(default=None, max_length=128)
    period: Optional[str] = Field(default=None, max_length=64)
    arm: Optional[str] = Field(default=None, max_length=16)  # statuses.HoldoutArm; NULL: no holdout
    delivered: bool = Field(default=False, sa_column_kwargs=server(False))
    status: str = Field(default="pending", max_length=16, sa_column_kwargs=server("pending"))  # statuses.OutcomeStatus
    event_id: Optional[int] = None
    achieved_at: Optional[float] = None
    elapsed_s: Optional[float] = None
    anchor_at: Optional[float] = None  # the clinical (or recorded) time the goal's window counts from
    window_opens: Optional[float] = None
    window_closes: Optional[float] = None
    created_at: float
    updated_at: float
    # report breakdowns (revision 0010; NULL on entries opened before it, reported as "unknown"):
    destination: Optional[str] = Field(default=None, max_length=400)  # the rule's destinations, comma-separated (held out too)
    anchor_month: Optional[str] = Field(default=None, max_length=8)  # "2026-11": the anchor's local month
    anchor_week: Optional[str] = Field(default=None, max_length=8)  # "2026-W47": the anchor's local ISO week
    # why its trigger was not delivered (a category of storage/outcome_stops.REASONS), kept by database triggers
    stopped: Optional[str] = Field(default=None, max_length=32)


class ConsoleSession(SQLModel, table=True):
    """A signed-in console user (issue 15). The cookie carries a random token; only its SHA-256
    is stored, so a copy of this table opens no session. Shared by every replica; a row idle
    longer than ``console_idle_timeout_s`` or past ``expires_at`` is over (deleted on lookup and
    by the retention loop)."""

    __tablename__ = "console_session"
    __table_args__ = (
        Index("ix_console_session_user", "user_name"),
        Index("ix_console_session_expires", "expires_at"),
        Index("ix_console_session_last_seen", "last_seen"),
    )
    token_sha256: str = Field(primary_key=True, max_length=64)
    user_name: str = Field(max_length=100)
    roles: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of role names
    permissions: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of extra permissions
    method: str = Field(max_length=16)  # password | oidc
    csrf: str = Field(max_length=64)
    created_at: float
    last_seen: float
    expires_at: float  # created_at + console_session_max_s: the absolute end


class ConsoleRollup(SQLModel, table=True):
    """Per-minute counts the console's overview draws its sparklines from (issue 15), filled
    incrementally from id watermarks (``console/rollups.py``), so a page view reads at most a
    day of small rows instead of counting messages or attempts.

    ``series``: ``ingest`` (key ``<kind>:<source>``, kind ``hl7v2`` or ``fhir``) or ``attempt``
    (key: the attempt's outcome); ``minute``: epoch seconds // 60."""

    __tablename__ = "console_rollup"
    series: str = Field(primary_key=True, max_length=16)
    minute: int = Field(primary_key=True)
    key: str = Field(primary_key=True, max_length=100)
    n: int = Field(default=0, sa_column_kwargs=server(0))
