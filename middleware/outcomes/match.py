"""The outcome of one journey entry from the clinical events that followed it (pure).

``achieved`` — the first qualifying event inside the window (its id and the time from the
anchor); ``excluded`` — an exclusion event (readmission, hospice, death where the goal's
definition excludes them) between the anchor and the window's close, unless the goal was
already achieved before it; ``missed`` — the window closed without either; ``pending`` —
still open. The result depends only on the events, not on the order they arrived, so late,
reconciled, backfilled and reprocessed events give the same outcome (idempotent).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from middleware.outcomes.window import Window
from middleware.storage.statuses import OutcomeStatus as Outcome

__all__ = ["Candidate", "Outcome", "Result", "decide"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A later event for the same patient (or resource), already matched against the goal's
    event types and condition (``qualifies``) or its exclusions (``excludes``)."""

    event_id: int
    clinical_time: datetime  # when it happened clinically (visit start), not when it arrived
    qualifies: bool = False
    excludes: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    event_id: int | None = None
    at: datetime | None = None
    elapsed: timedelta | None = None


def decide(anchor: datetime, win: Window, candidates: Iterable[Candidate], now: datetime) -> Result:
    # Compare and subtract in UTC (same-tzinfo datetimes compare by wall clock across DST).
    anchor = anchor.astimezone(UTC)
    candidates = [Candidate(c.event_id, c.clinical_time.astimezone(UTC), c.qualifies, c.excludes) for c in candidates]
    hits = sorted((c for c in candidates if c.qualifies and win.contains(c.clinical_time)),
                  key=lambda c: (c.clinical_time, c.event_id))
    exclusions = sorted((c for c in candidates if c.excludes and anchor <= c.clinical_time < win.closes),
                        key=lambda c: (c.clinical_time, c.event_id))
    first_hit = hits[0] if hits else None
    first_excl = exclusions[0] if exclusions else None
    if first_excl is not None and (first_hit is None or first_excl.clinical_time < first_hit.clinical_time):
        return Result(Outcome.EXCLUDED, first_excl.event_id, first_excl.clinical_time)
    if first_hit is not None:
        return Result(Outcome.ACHIEVED, first_hit.event_id, first_hit.clinical_time,
                      first_hit.clinical_time - anchor)
    if now >= win.closes:
        return Result(Outcome.MISSED)
    return Result(Outcome.PENDING)
