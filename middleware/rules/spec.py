"""The mapping language, as pydantic models: the single source of validation, the
published JSON Schema (``careloop mappings schema``) and the docs.

A rule file holds ``rules:``; each rule says which events it listens to (``on``,
``from``/``to``), a FHIRPath condition (``where``), when to fire (``when``), what
cancels it (``unless``), de-duplication and caps, the purpose, and what to emit.
"""
from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w|bd)\s*$")
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}

Purpose = Literal["treatment-reminder", "care-coordination", "marketing"]


def parse_duration(text: str) -> tuple[float, bool]:
    """``"2d"`` -> (172800.0, False); ``"2bd"`` -> (2.0, True) business days. Raises ValueError."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"'{text}' is not a duration (use e.g. 30m, 4h, 2d, 1w, 2bd for business days)")
    n, unit = float(m.group(1)), m.group(2)
    if unit == "bd":
        return n, True
    return n * _UNIT_S[unit], False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Duration = str


class QuietHours(_Strict):
    """No contact between ``start`` and ``end`` local time; a trigger due inside moves to ``end``."""

    start: str = Field(default="21:00", pattern=r"^\d{2}:\d{2}$")
    end: str = Field(default="08:00", pattern=r"^\d{2}:\d{2}$")
    zone: str = Field(default="patient", description="'patient', 'site' or an IANA zone")


class When(_Strict):
    """When to fire. Default: now. ``after`` delays from the event; ``at`` is a clinical
    timestamp (FHIRPath) with an optional ``offset`` such as ``-24h`` or ``+2bd``."""

    after: Duration | None = None
    at: str | None = Field(default=None, description="FHIRPath to a dateTime, e.g. Appointment.start")
    offset: Duration | None = Field(default=None, description="signed duration added to `at`, e.g. -24h, +2bd")
    quiet_hours: QuietHours | None = None
    skip_if_past: bool = True
    not_after: str | None = Field(
        default=None, description="FHIRPath to a dateTime the trigger must fire before (e.g. Appointment.start)"
    )

    @field_validator("after")
    @classmethod
    def _after(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("offset")
    @classmethod
    def _offset(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v.lstrip("+-"))
        return v

    @model_validator(mode="after")
    def _one(self) -> "When":
        if self.after and self.at:
            raise ValueError("use either 'after' or 'at', not both")
        if self.offset and not self.at:
            raise ValueError("'offset' needs 'at'")
        return self


class Unless(_Strict):
    """Cancel the pending trigger when one of these events happens for the same scope."""

    on: list[str]
    same: Literal["patient", "resource"] = "patient"
    where: str | None = Field(default=None, description="FHIRPath on the cancelling event's resource")
    within: Duration | None = Field(default=None, description="only events this soon after the trigger counts")


class WaitFor(_Strict):
    """Fire only if none of ``events`` happens within ``timeout`` (the gap branch)."""

    events: list[str]
    timeout: Duration
    same: Literal["patient", "resource"] = "patient"
    where: str | None = None


class Dedup(_Strict):
    """At most one trigger per patient per ``key`` (FHIRPath or constant) per ``window``."""

    key: str = Field(default="'default'")
    window: Duration = "30d"


class Emit(_Strict):
    trigger: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    destinations: list[str] = Field(min_length=1)
    payload: dict[str, str] = Field(
        default_factory=dict, description="field -> FHIRPath; a quoted string is a constant"
    )


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str = ""
    on: list[str] = Field(min_length=1)
    from_: list[str] | None = Field(default=None, alias="from")
    to: list[str] | None = None
    where: str | None = None
    include_backfill: bool = False
    when: When = Field(default_factory=When)
    unless: list[Unless] = Field(default_factory=list)
    wait_for: WaitFor | None = None
    dedup: Dedup | None = None
    message_kind: str | None = Field(default=None, description="kind counted by caps (e.g. appointment-reminder)")
    purpose: Purpose
    channel: Literal["sms", "voice", "email", "push", "none"] = "none"
    on_rule_change: Literal["keep", "reevaluate", "cancel"] = "keep"
    emit: Emit
    enabled: bool = True


class Caps(_Strict):
    per_day: int | None = None
    per_week: int | None = None


class RuleFileSpec(_Strict):
    """One YAML file in mappings/rules/."""

    description: str = ""
    valuesets: dict[str, list[str]] = Field(default_factory=dict, description="inline code lists: name -> system|code")
    rules: list[Rule] = Field(default_factory=list)


class Settings(_Strict):
    """``mappings/settings.yaml``: rule-set wide policy."""

    caps: Caps = Field(default_factory=lambda: Caps(per_day=1, per_week=3))
    treatment_caps: Caps = Field(default_factory=lambda: Caps(per_day=1, per_week=3))
    quiet_hours: QuietHours | None = Field(default_factory=QuietHours)
    site_timezone: str = "America/New_York"
    holidays: list[str] = Field(default_factory=list, description="extra holiday dates YYYY-MM-DD")
    holiday_calendar: str | None = Field(default="US", description="country code for the `holidays` package, or none")
    suppress_hospice: bool = True


def json_schema() -> dict:
    """The published JSON Schema of a rule file."""
    schema = RuleFileSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://careloop.dev/schemas/rules.schema.json"
    schema["title"] = "careloop rule file"
    return schema
