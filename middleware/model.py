"""Frozen shared types passed between stages (no I/O here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# the claimed inbox row and the event row are storage records (one type per row shape)
from .storage.queries.ingest import EventRecord as EventRecord
from .storage.queries.ingest import InboundItem as InboundItem


@dataclass(frozen=True)
class Merge:
    """ADT^A40: the prior patient's key is retired into the surviving one."""

    surviving_key: str
    retired_key: str


@dataclass(frozen=True)
class Normalized:
    """One HL7v2 message mapped to FHIR R4 JSON resources.

    ``patient_key`` is ``"<system>|<value>"`` of the MR identifier of the source's
    authority; resources reference the patient as ``Patient/<patient id>``.
    """

    source: str
    message_type: str  # "SIU^S12"
    trigger_event: str  # "S12"
    control_id: str
    version: str
    occurred_at: datetime  # EVN-2 (event time) else MSH-7; timezone-aware
    patient: dict[str, Any] | None
    patient_key: str | None
    resources: list[dict[str, Any]] = field(default_factory=list)
    merge: Merge | None = None
    warnings: list[str] = field(default_factory=list)
    #: ids of resources whose status the consumer keeps if it already knows one
    #: (ADT^A08 without PV1-45: the update cannot know the encounter's state)
    keep_status: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ResourceChange:
    """A resource as now known, with the version it replaces (if any)."""

    resource: dict[str, Any]
    previous: dict[str, Any] | None
    patient_key: str | None
    source: str
    arrival: str  # "message" | "notification" | "reconcile" | "backfill"
    occurred_at: datetime
    deleted: bool = False


@dataclass(frozen=True)
class ClinicalEvent:
    """One change of one resource, named ``<resource>.<new status>``."""

    type: str
    previous_status: str | None
    status: str | None
    resource_type: str
    resource_key: str
    patient_key: str | None
    resource: dict[str, Any]
    previous: dict[str, Any] | None
    source: str
    arrival: str
    occurred_at: datetime

