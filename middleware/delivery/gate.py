"""Send-time checks: may this trigger go to this destination *now*?

:func:`send_time_block` re-reads everything that can change between the trigger
firing and the send (cancellation, BAA, purpose, opt-outs, marketing authorization,
FHIR Consent) and returns ``(status, reason)`` to record on the delivery, or ``None``
to send. The records are read by :func:`middleware.storage.privacy.read_privacy`, which
the scheduler uses at fire time too: records under every key of the patient (merges,
ADT^A40, transitively) count. Reasons carry ids and categories, never PHI.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .. import purposes
from ..config.destinations import Destination
from ..storage.privacy import OptOut, read_privacy
from ..storage.sql import UnitOfWork
from ..storage.statuses import DeliveryStatus, TriggerStatus
from ..storage.tables import TriggerRow


def _opt_out_reason(r: OptOut) -> str:
    scope = f"destination {r.destination}" if r.destination else "all destinations"
    return f"opt-out (suppression {r.id}, {r.source or 'recorded'}; {scope}): {r.reason}"


def _static_block(t: Any, dest: Destination) -> tuple[str, str] | None:
    """The checks that need no database read (cancellation, BAA, purpose)."""
    if t.status == TriggerStatus.CANCELLED:
        return DeliveryStatus.SUPPRESSED, "trigger was cancelled"
    if t.patient_key and not dest.baa:
        return DeliveryStatus.SUPPRESSED, (f"destination {dest.name} has no business associate agreement; "
                              "patient-level triggers are refused at send time")
    if t.purpose not in dest.policy.purposes:
        return DeliveryStatus.SUPPRESSED, f"destination policy does not allow purpose {t.purpose}"
    return None


def send_time_blocks(u: UnitOfWork, items: Sequence[tuple[Any, Destination]], at: datetime) -> list[tuple[str, str] | None]:
    """:func:`send_time_block` for many ``(trigger, destination)`` pairs with one read per table.

    Same checks in the same order as the single form; suppressions and consents are
    considered oldest first (by id). ``trigger`` is a :class:`TriggerRow` or any row
    with its ``status``, ``patient_key`` and ``purpose``.
    """
    out: list[tuple[str, str] | None] = [_static_block(t, dest) for t, dest in items]
    todo = [i for i, (t, _) in enumerate(items) if out[i] is None and t.patient_key]
    if not todo:
        return out
    privacy = read_privacy(u, (items[i][0].patient_key for i in todo),
                           marketing=(items[i][0].patient_key for i in todo if purposes.needs_authorization(items[i][0].purpose)))
    for i in todo:
        t, dest = items[i]
        r = privacy.opt_out(t.patient_key, t.purpose, dest.name)
        if r is not None:
            out[i] = (DeliveryStatus.SUPPRESSED, _opt_out_reason(r))
        elif purposes.needs_authorization(t.purpose) and not privacy.has_marketing_authorization(t.patient_key):
            out[i] = (DeliveryStatus.SUPPRESSED, "marketing requires a recorded authorization for this patient (none active at send time)")
        else:
            reason = privacy.consent_denial(t.patient_key, t.purpose, dest.name, at)
            if reason:
                out[i] = (DeliveryStatus.SUPPRESSED, reason)
    return out


def send_time_block(u: UnitOfWork, t: TriggerRow, dest: Destination, at: datetime) -> tuple[str, str] | None:
    """``(status, reason)`` when the delivery must not be sent now, else None (see module docstring)."""
    return send_time_blocks(u, [(t, dest)], at)[0]
