"""The status values of rows with a lifecycle, one ``StrEnum`` per column (a leaf module: it
imports nothing of careloop). The database's CHECK constraints are generated from them
(:func:`one_of`), so a value the code does not know cannot be stored by any client.

``inbound_message.status`` got its CHECK in revision 0005: :class:`InboundStatus` covers every
status the code writes (a message that cannot be decoded is stored ``failed`` with the reason).
Adding a status means a migration that replaces the CHECK before any code writes the new value.
"""
from __future__ import annotations

from enum import StrEnum


class InboundStatus(StrEnum):
    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class TriggerStatus(StrEnum):
    PENDING = "pending"
    FIRED = "fired"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    SUPPRESSED = "suppressed"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD = "dead"
    SUPPRESSED = "suppressed"
    UNCONFIRMED = "unconfirmed"


class DisclosureOutcome(StrEnum):
    DELIVERED = "delivered"
    UNCONFIRMED = "unconfirmed"


def one_of(column: str, values: type[StrEnum]) -> str:
    """The SQL of a CHECK that ``column`` holds one of ``values`` (NULL passes, as in SQL)."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"
