"""The catalogue of clinical event types: ``<resource>.<FHIR R4 status>`` plus
``rescheduled`` / ``updated`` / ``deleted``, CarePlan activity events and patient merges.
Validation of mapping files and the rule language read it from here."""
from __future__ import annotations

STATUSES: dict[str, tuple[str, ...]] = {
    "appointment": (
        "proposed", "pending", "booked", "arrived", "fulfilled", "cancelled", "noshow",
        "entered-in-error", "checked-in", "waitlist",
    ),
    "encounter": (
        "planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
        "entered-in-error", "unknown",
    ),
    "careplan": ("draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"),
}

ACTIVITY_STATUSES = (
    "not-started", "scheduled", "in-progress", "on-hold", "completed", "cancelled", "stopped",
    "unknown", "entered-in-error",
)

EXTRA = {
    "appointment": ("rescheduled", "updated", "deleted"),
    "encounter": ("updated", "deleted"),
    "careplan": ("updated", "deleted"),
}

DESCRIPTIONS = {
    "rescheduled": "a booked appointment's start moved",
    "updated": "the resource changed but its status did not",
    "deleted": "the resource was deleted at the source",
}


def event_types() -> list[str]:
    """Every event type a rule may name."""
    out: list[str] = []
    for res, statuses in STATUSES.items():
        out += [f"{res}.{s}" for s in statuses]
        out += [f"{res}.{s}" for s in EXTRA[res]]
    out += [f"careplan.activity.{s}" for s in ACTIVITY_STATUSES]
    out.append("patient.merged")
    return out


EVENT_TYPES = frozenset(event_types())


def resource_prefix(resource_type: str) -> str:
    return resource_type.lower()
