"""A rule's or journey's **goal**: the later clinical event that shows it worked, in the rule
language (event names, FHIRPath conditions, value sets), within a window anchored to a
clinical time (see ``middleware/outcomes`` for how outcomes are decided and reported).

Example (the FUH-aligned 7-day follow-up)::

    goal:
      id: fuh-7d
      aligned_with: NCQA HEDIS FUH, 7-day rate (aligned, not a HEDIS result)
      on: [encounter.finished, encounter.in-progress, appointment.fulfilled]
      where: type.memberOf('fuh-followup-visit') or serviceType.memberOf('fuh-followup-visit')
      anchor: period.end            # on the trigger's resource: the discharge
      window: {from: 1, to: 7}      # local calendar dates after the discharge date
      exclude:
        - on: [encounter.in-progress, encounter.finished]
          where: class.code = 'IMP'
          reason: readmission
"""
from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):  # as rules.spec's (spec imports this module, so it cannot import spec)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


FhirPath = Annotated[str, Field(description="FHIRPath on the resource in context; %origin is the trigger's resource")]

GoalUnit = Literal["calendar_days", "business_days", "hours"]

#: the clinical time of a resource when a goal does not name one
DEFAULT_TIME = {"encounter": "period.start", "appointment": "start", "careplan": "period.start"}
#: the anchor on the trigger's resource when a goal does not name one
DEFAULT_ANCHOR = {"encounter": "period.end", "appointment": "start", "careplan": "period.start"}


class GoalWindow(_Strict):
    """Days ``from``..``to`` (inclusive) after the anchor's local date (day 0 is the anchor's
    own date), business days after it, or elapsed hours (``to`` exclusive)."""

    from_: int = Field(default=1, alias="from", ge=0)
    to: int = Field(ge=0)
    unit: GoalUnit = "calendar_days"

    @model_validator(mode="after")
    def _order(self) -> "GoalWindow":
        if self.to < self.from_:
            raise ValueError(f"window 'to' ({self.to}) is before 'from' ({self.from_}), e.g. window: {{from: 1, to: 7}}")
        return self


class GoalExclusion(_Strict):
    on: list[str] = Field(min_length=1)
    where: FhirPath | None = None
    same: Literal["patient", "resource"] = "patient"
    reason: str = Field(min_length=1, description="why an entry with this event leaves the denominator")


class Goal(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="the measure's id (one FHIR Measure per goal)")
    description: str = ""
    aligned_with: str = Field(default="", description="the published definition the goal follows (cited in docs)")
    on: list[str] = Field(min_length=1, description="event types that can achieve the goal")
    where: FhirPath | None = Field(default=None, description="on the later event's resource; %origin is the trigger's")
    same: Literal["patient", "resource"] = Field(
        default="patient", description="'resource': only the trigger's own appointment/encounter counts")
    anchor: FhirPath | None = Field(default=None, description="clinical time on the trigger's resource")
    anchored_at: Literal["clinical", "recorded"] = Field(
        default="clinical", description="'clinical': `anchor` on the trigger's resource; 'recorded': when the change that "
        "started the entry happened (a nudge about a CarePlan activity)")
    time: FhirPath | None = Field(default=None, description="clinical time on the later event's resource")
    counted_at: Literal["clinical", "recorded"] = Field(
        default="clinical", description="'clinical': the later event's clinical time (a visit's start); 'recorded': when "
        "the change happened (a booking made within 14 days, whatever the new visit's date)")
    window: GoalWindow
    fails_on: list[str] = Field(default_factory=list,
                                description="event types of the same resource that settle the goal as missed (appointment.noshow)")
    exclude: list[GoalExclusion] = Field(default_factory=list)


class Study(_Strict):
    """An approved study that may hold back treatment or care-coordination contacts."""

    approval: str = Field(min_length=1, description="IRB or quality-improvement approval id")
    approver: str = Field(min_length=1)
    expires: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="YYYY-MM-DD; refused after this date")


class Holdout(_Strict):
    """Hold back a share of eligible patients to measure the goal against them."""

    share: float = Field(gt=0, lt=1, description="fraction held out, e.g. 0.1 for 10%")
    experiment: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.-]*$",
                                   description="experiment id (default: the rule's or journey's id)")
    period: Literal["month", "quarter", "year"] = Field(
        default="quarter", description="salt rotation: each period is a new experiment period, never pooled")
    min_lift: float = Field(default=0.05, gt=0, lt=1, description="smallest absolute change worth detecting (power note)")
    study: Study | None = None


def period_of(kind: str, year: int, month: int) -> str:
    """The experiment period label of a local date (``2026Q4``, ``2026-11``, ``2026``)."""
    if kind == "month":
        return f"{year:04d}-{month:02d}"
    if kind == "year":
        return f"{year:04d}"
    return f"{year:04d}Q{(month - 1) // 3 + 1}"


#: purposes whose contacts are clinically required: never held out without an approved study
NO_HOLDOUT_PURPOSES = frozenset({"treatment-reminder", "care-coordination"})


def check_goal_and_holdout(sink: Any, node: Any, rule: Any, names: set[str], today: str,
                           check_events: Callable[..., None], check_expr: Callable[..., bool]) -> None:
    """Validation of ``goal`` and ``holdout`` (called by the loader with its own checkers)."""
    g: Goal | None = rule.goal
    if g is not None:
        gnode = node["goal"]
        check_events(sink, gnode, "on", g.on)
        if g.fails_on:
            check_events(sink, gnode, "fails_on", g.fails_on)
        for key, expr in (("where", g.where), ("anchor", g.anchor), ("time", g.time)):
            check_expr(sink, gnode, key, expr, names, f"goal.{key}", frozenset({"origin"}))
        for j, x in enumerate(g.exclude):
            check_events(sink, gnode["exclude"][j], "on", x.on)
            check_expr(sink, gnode["exclude"][j], "where", x.where, names, "goal.exclude.where", frozenset({"origin"}))
    h: Holdout | None = rule.holdout
    if h is None:
        return
    hnode = node["holdout"]
    if g is None:
        sink.error(node, "holdout", "holdout-without-goal",
                   f"rule '{rule.id}': a holdout measures a goal; add `goal:` (e.g. a booking within 14 days)")
    if rule.purpose in NO_HOLDOUT_PURPOSES:
        if h.study is None:
            sink.error(node, "holdout", "holdout-refused",
                       f"rule '{rule.id}': {rule.purpose} contacts are never held out (patients would miss clinically "
                       "needed contact); only an approved study may, declared as holdout.study "
                       "{approval: <IRB or QI id>, approver: <name>, expires: YYYY-MM-DD}")
        elif h.study.expires < today:
            sink.error(hnode["study"], "expires", "study-expired",
                       f"rule '{rule.id}': study approval {h.study.approval} expired on {h.study.expires}; "
                       "the holdout is refused (renew the approval or remove the holdout)")
