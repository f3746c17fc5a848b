"""Opening exits (issue 17): when a later clinical event cancels a journey's or rule's entry that a
destination already received, or the patient dies, that destination is told to take the patient
out of its own journey (Journey Builder's waits and Braze's delays otherwise run on).

Exits are delivery rows of kind ``exit`` written in the event's own transaction, one per entry and
destination (``exit_key``), for destinations with ``exit:`` configured. What they carry is generic
(``careloop_exit``, the pseudonymous key and ids): never why.
"""
from __future__ import annotations

import hashlib
from typing import Any

from ..rules.evaluate import Cancellation
from ..rules.load import RuleSet
from ..storage.queries import exits as q
from ..storage.sql import Query, UnitOfWork


def exit_destinations(rs: RuleSet) -> list[str]:
    """Enabled destinations with ``exit:`` configured (sorted; empty: no exit is ever opened)."""
    return sorted(d.name for d in rs.destinations.values() if d.enabled and d.exit is not None)


def exit_key(entry: q.DeliveredEntry) -> str:
    """One exit per journey entry and destination: the journey (or rule) and the resource it is about,
    and the first delivered entry's key (so a later re-entry gets an exit of its own)."""
    raw = f"exit|{entry.destination}|{entry.journey_id or entry.rule_id}|{entry.resource_key}|{entry.idempotency_key}"
    return "cx_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def entries_call(cs: list[Cancellation], dests: list[str], since: float) -> tuple[Query, dict[str, Any]]:
    """One read of the delivered entries the cancellations ``cs`` (one scope) end."""
    return (q.ENTRIES_FOR_PATIENT if cs[0].same == "patient" else q.ENTRIES_FOR_RESOURCE,
            {"rule_ids": sorted({c.rule_id for c in cs}), "key": cs[0].key, "since": since, "destinations": dests})


def open_for_death(u: UnitOfWork, patient_key: str, dests: list[str], nowts: float) -> int:
    """A patient's death exits every journey at every exit-enabled destination."""
    return open_entries(u, u.all(q.ALL_ENTRIES_OF_PATIENT, key=patient_key, destinations=dests), nowts)


def open_entries(u: UnitOfWork, entries: list[q.DeliveredEntry], nowts: float) -> int:
    """Exits for these delivered entries (one per entry and destination); how many were asked for."""
    first: dict[tuple[str, str, str | None], q.DeliveredEntry] = {}
    for e in sorted(entries, key=lambda e: e.trigger_id):
        first.setdefault((e.destination, e.journey_id or e.rule_id, e.resource_key), e)
    rows = [{"trigger_id": e.trigger_id, "destination": e.destination, "idempotency_key": exit_key(e), "now": nowts}
            for e in first.values()]
    q.add(u, rows)
    return len(rows)
