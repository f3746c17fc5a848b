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


class DeliveryKind(StrEnum):
    """What a delivery carries: an entry (a trigger's message) or an exit (issue 17: take the
    patient out of the destination's journey; generic, no reason)."""

    ENTRY = "entry"
    EXIT = "exit"


class Confirmation(StrEnum):
    """What the vendor's answer proves (``delivery.confirmation``; NULL: the answer is final).

    ``accepted``: queued by an asynchronous API with no documented lookup (Journey Builder's event
    entry), so careloop cannot prove the contact entered; ``pending``: accepted, confirmation being
    polled (Journey Builder's contact-exit status); ``confirmed``; ``unconfirmed``: not confirmed in
    time or refused by the status endpoint (an alert is raised)."""

    ACCEPTED = "accepted"
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"


class DisclosureOutcome(StrEnum):
    DELIVERED = "delivered"
    UNCONFIRMED = "unconfirmed"


class OutcomeStatus(StrEnum):
    """A journey entry's goal: still open, reached, window closed without it, or excluded."""

    PENDING = "pending"
    ACHIEVED = "achieved"
    MISSED = "missed"
    EXCLUDED = "excluded"


class HoldoutArm(StrEnum):
    TREATED = "treated"
    HELD_OUT = "held_out"


def one_of(column: str, values: type[StrEnum]) -> str:
    """The SQL of a CHECK that ``column`` holds one of ``values`` (NULL passes, as in SQL)."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"
