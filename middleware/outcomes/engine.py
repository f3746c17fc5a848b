"""A goal compiled for matching: which later events qualify or exclude, their clinical
times, and the window of one journey entry. Storage calls :meth:`CompiledGoal.decide` with
the entry's origin resource and the patient's later events it read by index (patient id and
event type), so matching never scans.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from middleware.outcomes.match import Candidate, Outcome, Result, decide
from middleware.outcomes.window import BusinessDay, Unit, Window, WindowSpec, weekdays, window
from middleware.rules.fhirpath import Compiled, ValueSets, compile_expr, first_value, truthy
from middleware.rules.goal import DEFAULT_ANCHOR, DEFAULT_TIME, Goal
from middleware.rules.timing import parse_fhir_datetime


@dataclass(frozen=True, slots=True)
class LaterEvent:
    """A stored event after the entry, as storage hands it over."""

    id: int
    type: str
    resource_type: str
    resource_key: str
    resource: dict[str, Any]
    occurred_at: datetime


def _clinical_time(expr: Compiled | None, resource: dict[str, Any], env: dict[str, Any], zone: str) -> datetime | None:
    if expr is None:
        return None
    return parse_fhir_datetime(_text(first_value(expr(resource, env))), zone)


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    to = getattr(v, "toString", None)
    return str(to()) if callable(to) else str(v)


class CompiledGoal:
    def __init__(self, goal: Goal, valuesets: ValueSets | None = None, zone: str = "UTC",
                 is_business_day: BusinessDay = weekdays) -> None:
        self.goal = goal
        self.zone = zone
        self.is_business_day = is_business_day
        self.spec = WindowSpec(goal.window.from_, goal.window.to, Unit(goal.window.unit))
        def c(expr: str | None) -> Compiled | None:
            return compile_expr(expr, valuesets, zone=zone) if expr else None

        self._where = c(goal.where)
        self._anchor = c(goal.anchor)
        self._time = c(goal.time)
        self._defaults = {k: compile_expr(v, valuesets, zone=zone) for k, v in DEFAULT_TIME.items()}
        self._anchors = {k: compile_expr(v, valuesets, zone=zone) for k, v in DEFAULT_ANCHOR.items()}
        self._excl = [(set(x.on), c(x.where), x.same) for x in goal.exclude]
        self.event_types = frozenset(goal.on) | frozenset(goal.fails_on) | frozenset(t for x in goal.exclude for t in x.on)

    def anchor_time(self, origin: dict[str, Any]) -> datetime | None:
        expr = self._anchor or self._anchors.get(str(origin.get("resourceType", "")).lower())
        return _clinical_time(expr, origin, {}, self.zone)

    def window_for(self, origin: dict[str, Any], recorded: datetime | None = None) -> tuple[datetime, Window] | None:
        """The anchor and window of an entry (``recorded``: when its starting change happened)."""
        anchor = recorded if self.goal.anchored_at == "recorded" and recorded is not None else self.anchor_time(origin)
        if anchor is None:
            return None
        return anchor, window(anchor, self.spec, ZoneInfo(self.zone), self.is_business_day)

    def candidate(self, origin: dict[str, Any], origin_key: str, ev: LaterEvent) -> Candidate | None:
        env = {"origin": origin}
        same_resource = ev.resource_key == origin_key
        if ev.type in self.goal.fails_on and same_resource:
            return None  # handled by decide_entry: settles the goal as missed
        qualifies = ev.type in self.goal.on and (self.goal.same == "patient" or same_resource) and (
            self._where is None or truthy(self._where(ev.resource, env)))
        excludes = any(ev.type in types and (same == "patient" or same_resource) and (w is None or truthy(w(ev.resource, env)))
                       for types, w, same in self._excl)
        if not (qualifies or excludes):
            return None
        if self.goal.counted_at == "recorded":
            when = ev.occurred_at
        else:
            expr = self._time or self._defaults.get(ev.resource_type.lower())
            when = _clinical_time(expr, ev.resource, env, self.zone) or ev.occurred_at
        return Candidate(ev.id, when, qualifies, excludes)

    def decide_entry(self, origin: dict[str, Any], origin_key: str, events: Iterable[LaterEvent],
                     now: datetime, fixed: tuple[datetime, Window] | None = None,
                     origin_recorded: datetime | None = None) -> tuple[Result, Window | None]:
        """The outcome of one journey entry; ``events`` are the patient's later events of
        :attr:`event_types` (any order, duplicates harmless); ``fixed``: the anchor and window
        recorded when the entry was opened; ``origin_recorded``: when the entry's own change
        happened — with ``counted_at: recorded`` only changes after it count (the booking of the
        missed visit itself, made earlier that day, is not its rebooking)."""
        got = fixed or self.window_for(origin)
        if got is None:
            return Result(Outcome.EXCLUDED), None  # no clinical anchor: cannot be measured
        anchor, win = got
        evs = list(events)
        if self.goal.counted_at == "recorded" and origin_recorded is not None:
            evs = [e for e in evs if e.occurred_at > origin_recorded or e.type in self.goal.fails_on]
        cands = [c for c in (self.candidate(origin, origin_key, e) for e in evs) if c is not None]
        result = decide(anchor, win, cands, now)
        failed = sorted((e for e in evs if e.type in self.goal.fails_on and e.resource_key == origin_key),
                        key=lambda e: (e.occurred_at, e.id))
        if failed and result.outcome is Outcome.PENDING:
            return Result(Outcome.MISSED, failed[0].id, failed[0].occurred_at), win
        return result, win


def local_date(t: datetime, zone: str) -> date:
    return t.astimezone(ZoneInfo(zone)).date()
