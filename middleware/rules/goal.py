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

from typing import Literal

from pydantic import Field, model_validator

from .spec import FhirPath, _Strict

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
    time: FhirPath | None = Field(default=None, description="clinical time on the later event's resource")
    window: GoalWindow
    fails_on: list[str] = Field(default_factory=list,
                                description="event types of the same resource that settle the goal as missed (appointment.noshow)")
    exclude: list[GoalExclusion] = Field(default_factory=list)
