"""The mapping language, as pydantic models: the single source of validation, the
published JSON Schema (``careloop mappings schema``) and the docs.

A rule file holds ``rules:``; each rule says which events it listens to (``on``,
``from``/``to``), a FHIRPath condition (``where``), when to fire (``when``), what
cancels it (``unless``), de-duplication and caps, the purpose, and what to emit.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .sendtime import normalize_time_of_day

from ..purposes import Purpose

from .goal import Goal, Holdout

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w|bd)\s*$")
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
#: units counted on the local calendar (the wall-clock time is kept across DST changes)
CALENDAR_UNITS = frozenset({"d", "w"})



def parse_duration(text: str) -> tuple[float, bool]:
    """``"2d"`` -> (172800.0, False); ``"2bd"`` -> (2.0, True) business days. Raises ValueError."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"'{text}' is not a duration (use e.g. 30m, 4h, 2d, 1w, 2bd for business days)")
    n, unit = float(m.group(1)), m.group(2)
    if unit == "bd":
        return n, True
    return n * _UNIT_S[unit], False


def duration_unit(text: str) -> str:
    """The unit of a duration: ``"2d"`` -> ``"d"``. Raises ValueError like :func:`parse_duration`."""
    m = _DURATION.match(str(text).strip().lstrip("+-"))
    if not m:
        raise ValueError(f"'{text}' is not a duration")
    return m.group(2)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_duration(v: str) -> str:
    parse_duration(str(v).strip().lstrip("+-"))
    return v


_DURATION_DOC = "30m, 4h (elapsed time), 2d, 1w (calendar days: same local time), 2bd (business days)"
#: a duration such as ``4h``, ``2d`` or ``2bd``; an ``offset`` may carry a sign
Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    Field(description=_DURATION_DOC, json_schema_extra={"pattern": r"^[+-]?\s*\d+(\.\d+)?\s*(s|m|min|h|d|w|bd)\s*$"}),
]
FhirPath = Annotated[str, Field(description="FHIRPath on the event's resource; %previous, %patient, %age, %now, %diagnoses, "
                                            "%activity, %origin, %hospice")]


class QuietHours(_Strict):
    """No contact between ``start`` and ``end`` local time; a trigger due inside moves to ``end``."""

    start: str = Field(default="21:00", pattern=r"^\d{2}:\d{2}$")
    end: str = Field(default="08:00", pattern=r"^\d{2}:\d{2}$")
    zone: str = Field(default="patient", description="'patient' (the patient's zone, else the site's), 'site', or an IANA zone")


#: a time of day, 24-hour ``HH:MM`` (an unquoted YAML ``10:00`` is read as 10:00 too)
TimeOfDay = Annotated[
    str,
    BeforeValidator(normalize_time_of_day),
    Field(description='time of day, 24-hour HH:MM in quotes, e.g. "10:00"',
          json_schema_extra={"pattern": r"^([01]?\d|2[0-3]):[0-5]\d$"}),
]


class When(_Strict):
    """When to fire. Default: now. ``after`` delays from the event; ``at`` is a clinical
    timestamp (FHIRPath) with an optional ``offset`` such as ``-1d`` or ``+2bd``.
    Never in the past: a due time already passed is skipped and recorded (or, with
    ``skip_if_past: false``, sent now); a due time that quiet hours push to or past
    ``not_after`` is skipped and recorded."""

    after: Duration | None = None
    at: FhirPath | None = Field(default=None, description="FHIRPath to a dateTime, e.g. start or period.end")
    offset: Duration | None = Field(default=None, description="signed duration added to `at`, e.g. -1d, -24h, +2bd")
    quiet_hours: QuietHours | None = Field(default=None, description="overrides settings.quiet_hours for this rule")
    skip_if_past: bool = Field(default=True, description="true: a due time already passed is skipped; false: fire now")
    not_after: FhirPath | None = Field(
        default=None, description="FHIRPath to a dateTime the trigger must fire before (e.g. start)"
    )
    # send times (docs/rules.md#send-times, rules/sendtime.py)
    at_time: TimeOfDay | None = Field(
        default=None, description="send at this local time (the patient's zone, else the site's) on the day "
                                  "`at`/`after`/`wait_for` gives (today without them)")
    business_days: Literal["none", "next", "previous"] = Field(
        default="none", description="a send date on a weekend or holiday (settings.holiday_calendar): "
                                    "move to the next or previous business day, or keep it (none)")
    if_time_passed: Literal["next_day", "now", "skip"] = Field(
        default="next_day", description="the send date is today and at_time has passed: same time the next "
                                        "(business) day, now, or skip")

    @model_validator(mode="after")
    def _one(self) -> "When":
        if self.after and self.at:
            raise ValueError("use either 'after' or 'at', not both")
        if self.offset and not self.at:
            raise ValueError("'offset' needs 'at'")
        return self


class Unless(_Strict):
    """Cancel the pending trigger as soon as one of these events happens for the same
    patient (or the same resource). ``where`` sees the cancelling resource and, as
    ``%origin``, the resource that created the trigger."""

    on: list[str] = Field(min_length=1)
    same: Literal["patient", "resource"] = "patient"
    where: FhirPath | None = Field(default=None, description="FHIRPath on the cancelling event's resource; %origin is the trigger's")
    within: Duration | None = Field(default=None, description="only triggers created this recently are cancelled")


class WaitFor(_Strict):
    """Wait for one of ``events`` (the journey continues elsewhere); if none happens
    within ``timeout`` the trigger fires: the gap branch."""

    events: list[str] = Field(min_length=1)
    timeout: Duration
    same: Literal["patient", "resource"] = "patient"
    where: FhirPath | None = Field(default=None, description="FHIRPath on the awaited event's resource; %origin is the trigger's")


class Dedup(_Strict):
    """At most one trigger per patient per ``key`` (FHIRPath or constant) per ``window``."""

    key: FhirPath = Field(default="'default'")
    window: Duration = "30d"


class Emit(_Strict):
    trigger: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="the trigger name destinations receive")
    destinations: list[str] = Field(min_length=1)
    payload: dict[str, str] = Field(
        default_factory=dict, description="field -> FHIRPath; a quoted string ('text') is a constant; `purpose` is always added"
    )
    internal: list[str] = Field(
        default_factory=list,
        description="payload fields kept on the trigger for %payload in cancellation conditions and golden tests, "
        "never meant to leave: validation does not warn that policies strip them (and errs if one allows them)",
    )


class Overlap(_Strict):
    """How this rule or journey relates to others that start on the same event type with the
    same purpose and destination (validation warns about every such pair not declared here).

    * ``exclusive_with``: the listed rules/journeys do not start for a resource this one has
      taken (same event, or a later one while this one's trigger is pending or fired): they
      are recorded ``skipped`` ("superseded by ...").
    * ``with`` + ``discriminator``: both fire by design; the destination tells them apart by
      ``trigger`` (the trigger names differ) or by a payload field whose constant values
      differ (e.g. ``reminder: "'72h'"`` vs ``"'24h'"``).
    """

    exclusive_with: list[str] = Field(default_factory=list, description="rule or journey ids this one supersedes")
    with_: list[str] = Field(default_factory=list, alias="with", description="rule or journey ids that also fire, by design")
    discriminator: str | None = Field(
        default=None, description="'trigger' or a payload field with a distinct constant value in each (needed with `with`)")

    @model_validator(mode="after")
    def _complete(self) -> "Overlap":
        if self.with_ and not self.discriminator:
            raise ValueError("overlap.with needs a discriminator: 'trigger' or a payload field that differs")
        if self.discriminator and not self.with_:
            raise ValueError("overlap.discriminator needs `with`: the rules or journeys it separates this one from")
        if not self.with_ and not self.exclusive_with:
            raise ValueError("overlap needs exclusive_with or with + discriminator")
        return self


NoLongerMatching = Literal["cancel", "keep"]
_NLM_DOC = ("a change to the resource makes `where` false on complete data: cancel the pending trigger (default) or "
            "keep it; required for treatment and care-coordination purposes")


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    source: str = Field(default="", description="the definition this rule implements (e.g. CMS TCM, HEDIS FUH)")
    on: list[str] = Field(min_length=1, description="event types (see `careloop events`)")
    from_: list[str] | None = Field(default=None, alias="from", description="previous statuses; [] or null means any")
    to: list[str] | None = Field(default=None, description="new statuses")
    where: FhirPath | None = None
    include_backfill: bool = False
    when: When = Field(default_factory=When)
    unless: list[Unless] = Field(default_factory=list)
    wait_for: WaitFor | None = None
    dedup: Dedup | None = None
    message_kind: str | None = Field(default=None, description="kind counted by caps across rules (e.g. appointment-reminder)")
    purpose: Purpose
    channel: Literal["sms", "voice", "email", "push", "none"] = "none"
    on_rule_change: Literal["keep", "reevaluate", "cancel"] = Field(
        default="keep", description="pending triggers when this rule changes on reload: keep, reevaluate, cancel"
    )
    emit: Emit
    enabled: bool = True
    on_no_longer_matching: NoLongerMatching = Field(default="cancel", description=_NLM_DOC)
    overlap: Overlap | None = None
    goal: Goal | None = Field(default=None, description="the later clinical event that shows the rule worked (issue 14)")
    holdout: Holdout | None = Field(default=None, description="hold back a share of eligible patients (issue 14)")

    @model_validator(mode="after")
    def _timing(self) -> "Rule":
        if self.wait_for and (self.when.after or self.when.at):
            raise ValueError("wait_for sets the due time (its timeout); do not combine it with when.after or when.at")
        return self


class Caps(_Strict):
    """At most ``per_day`` / ``per_week`` messages per patient. ``per: rolling`` counts the
    last 24 hours / 7 days; ``per: calendar`` counts the calendar day and week (from
    ``week_starts``) in the patient's zone, as outreach tools do."""

    per_day: int | None = Field(default=None, ge=0)
    per_week: int | None = Field(default=None, ge=0)
    per: Literal["rolling", "calendar"] = Field(
        default="rolling", description="rolling: the last 24 h / 7 days; calendar: today / this week in the patient's zone")
    week_starts: Literal["monday", "sunday"] = Field(default="monday", description="first day of a calendar week")


# -- journeys (docs/rules.md#journeys; compiled into rules by rules/journeys.py) --


class JourneyEntry(_Strict):
    """The one event (and condition) that starts a journey."""

    on: list[str] = Field(min_length=1, description="event types (see `careloop events`)")
    from_: list[str] | None = Field(default=None, alias="from", description="previous statuses")
    to: list[str] | None = Field(default=None, description="new statuses")
    where: FhirPath | None = None
    include_backfill: bool = False


class JourneyExit(Unless):
    """An event that ends the journey: every pending step is cancelled at once, with ``name`` as the reason."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_ .-]*$", description="the exit's name, recorded in the reason")


class JourneyStep(_Strict):
    """One step: a rule without its own entry (it starts when the journey does)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="unique in the journey; the rule id is <journey>.<step>")
    description: str = ""
    where: FhirPath | None = Field(default=None, description="an extra condition for this step (and-ed with the entry's)")
    when: When = Field(default_factory=When)
    wait_for: WaitFor | None = None
    unless: list[Unless] = Field(default_factory=list, description="cancels this step only (exits cancel every step)")
    channel: Literal["sms", "voice", "email", "push", "none"] | None = None
    emit: Emit

    @model_validator(mode="after")
    def _timing(self) -> "JourneyStep":
        if self.wait_for and (self.when.after or self.when.at):
            raise ValueError("wait_for sets the due time (its timeout); do not combine it with when.after or when.at")
        return self


class JourneyCap(_Strict):
    """At most this many of the journey's messages per patient (all steps together)."""

    per_day: int | None = Field(default=None, ge=0)
    per_week: int | None = Field(default=None, ge=0)


class Journey(_Strict):
    """Ordered steps under one entry, one set of exits, one cap and one dedup scope."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    source: str = ""
    entry: JourneyEntry
    exit: list[JourneyExit] = Field(default_factory=list, description="each cancels every pending step at once")
    steps: list[JourneyStep] = Field(min_length=1)
    purpose: Purpose
    channel: Literal["sms", "voice", "email", "push", "none"] = "none"
    message_kind: str | None = Field(default=None, description="what caps count; default: the journey id")
    cap: JourneyCap | None = Field(default=None, description="the journey's messages per patient (besides settings.caps)")
    dedup: Dedup | None = Field(default=None, description="one entry per patient per key per window")
    on_no_longer_matching: NoLongerMatching = Field(default="cancel", description=_NLM_DOC)
    on_rule_change: Literal["keep", "reevaluate", "cancel"] = "keep"
    overlap: Overlap | None = None
    enabled: bool = True
    goal: Goal | None = Field(default=None, description="the journey's goal: one entry per journey entry (docs/outcomes.md)")
    holdout: Holdout | None = Field(default=None, description="hold back a share of entries: every step of a held-out entry")


class RuleFileSpec(_Strict):
    """One YAML file in mappings/rules/."""

    description: str = ""
    valuesets: dict[str, list[str]] = Field(default_factory=dict, description="inline code lists: name -> ['system|code' or 'code']")
    rules: list[Rule] = Field(default_factory=list)
    journeys: list[Journey] = Field(default_factory=list, description="journeys: ordered steps with one entry and exits")


class Settings(_Strict):
    """``mappings/settings.yaml``: rule-set wide policy."""

    caps: Caps = Field(default_factory=lambda: Caps(per_day=1, per_week=3), description="per patient per message_kind")
    treatment_caps: Caps = Field(
        default_factory=lambda: Caps(per_day=1, per_week=3),
        description="FCC healthcare exemption: treatment sms+voice per patient, all rules together",
    )
    quiet_hours: QuietHours | None = Field(default_factory=QuietHours)
    site_timezone: str = "America/New_York"
    holidays: list[str] = Field(default_factory=list, description="extra holiday dates YYYY-MM-DD")
    holiday_calendar: str | None = Field(
        default="US", description="US (or us-federal): U.S. federal holidays computed by rule (5 U.S.C. 6103, "
                                  "observed days); another country code: the `holidays` package; null: none")
    zone_from_address: bool = Field(
        default=True, description="without a timezone extension on the Patient, take the zone of the state of the "
                                  "patient's U.S. home address (else the site's)")
    suppress_hospice: bool = True
    hospice_valueset: str = Field(default="hospice", description="value set naming hospice dispositions, encounter types, care plans")


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a rule file (``docs/schema/rules.schema.json``)."""
    schema = RuleFileSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://careloop.dev/schemas/rules.schema.json"
    schema["title"] = "careloop rule file"
    return schema


def settings_schema() -> dict[str, Any]:
    """The published JSON Schema of ``mappings/settings.yaml``."""
    schema = Settings.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://careloop.dev/schemas/settings.schema.json"
    schema["title"] = "careloop rule-set settings"
    return schema
