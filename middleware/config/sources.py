"""Inbound sources (``mappings/sources.yaml``): one per feed, HL7v2 or FHIR.

An HL7v2 source is matched by MLLP listener port or by MSH-3/MSH-4; a FHIR source
names the server careloop subscribes to. A source named ``default`` always exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .yamlpos import DiagnosticSink, YamlError, load_positioned, pydantic_errors_to_diagnostics

DEFAULT_ACCEPT = [
    "SIU^S12", "SIU^S13", "SIU^S14", "SIU^S15", "SIU^S16", "SIU^S17", "SIU^S26",
    "ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A05", "ADT^A08", "ADT^A11",
    "ADT^A13", "ADT^A40",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hl7Settings(_Strict):
    """How to read one HL7v2 feed."""

    ports: list[int] = Field(default_factory=list, description="MLLP listener ports this source owns")
    sending_application: str | None = Field(default=None, description="match on MSH-3.1")
    sending_facility: str | None = Field(default=None, description="match on MSH-4.1")
    timezone: str = Field(default="UTC", description="IANA zone for timestamps without an offset")
    charset_fallback: str = Field(default="cp1252", description="codec when MSH-18 is empty or unknown")
    accept: list[str] = Field(default_factory=lambda: list(DEFAULT_ACCEPT))
    versions: list[str] = Field(default_factory=lambda: ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8"])
    processing_ids: list[str] = Field(default_factory=lambda: ["P", "T", "D"])
    mrn_authority: str | None = Field(
        default=None, description="PID-3.4 of the MR identifier used as patient key (first MR if unset)"
    )
    identifier_systems: dict[str, str] = Field(
        default_factory=dict,
        description="assigning authority or facility (PID-3.4, SCH-1.2, PV1-19.4 ...) -> identifier system URI",
    )
    default_system_prefix: str = Field(
        default="urn:careloop:id:", description="system for an authority with no mapping: prefix + authority"
    )
    structure: Literal["lenient", "strict"] = Field(
        default="lenient",
        description="checks before the ACK: lenient answers AE only for what careloop needs and warns (ERR severity W) "
        "for other required segments and misfit fields; strict answers AE for those too (docs/hl7v2-to-fhir.md)",
    )
    batch_acks: Literal["all", "errors"] = Field(
        default="all",
        description="HL7 batches: the response batch carries an ACK per message (all) or only the negative ones (errors)",
    )

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        ZoneInfo(v)
        return v

    @field_validator("charset_fallback")
    @classmethod
    def _codec(cls, v: str) -> str:
        import codecs

        codecs.lookup(v)
        return v

    def system_for(self, authority: str | None) -> str:
        if not authority:
            return self.default_system_prefix + "local"
        return self.identifier_systems.get(authority) or (self.default_system_prefix + authority)


class FhirAuth(_Strict):
    kind: Literal["none", "bearer", "client-credentials"] = "none"
    token_env: str | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    scope: str | None = None


class FhirSettings(_Strict):
    """A FHIR server that notifies careloop."""

    base_url: str | None = None
    version: Literal["R4", "R4B", "R5"] = "R4"
    notification_token_env: str | None = Field(
        default=None,
        description="env var holding the token HAPI sends in channel.header (default CARELOOP_FHIR_TOKEN_<SOURCE>)",
    )
    auth: FhirAuth = Field(default_factory=FhirAuth)
    reconcile_interval_s: float = 300.0
    reconcile_overlap_s: float = 120.0
    resource_types: list[str] = Field(default_factory=lambda: ["Appointment", "Encounter", "CarePlan"])
    identifier_systems: list[str] = Field(
        default_factory=list, description="identifier systems that identify the same resource across sources"
    )


class Source(_Strict):
    name: str
    kind: Literal["hl7v2", "fhir"] = "hl7v2"
    timezone: str = "UTC"
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)


class SourcesFile(_Strict):
    sources: list[Source] = Field(default_factory=list)


class Sources:
    """The configured sources with lookup by port / MSH-3 / MSH-4 / name."""

    def __init__(self, items: list[Source]) -> None:
        names = {s.name for s in items}
        if "default" not in names:
            items = [Source(name="default"), *items]
        self.items = items
        self.by_name = {s.name: s for s in items}

    def for_hl7(self, port: int | None, msh3: str | None, msh4: str | None) -> Source:
        """The source an HL7v2 message belongs to: MSH-3/MSH-4 match first, then port, then default."""
        best = None
        for s in self.items:
            h = s.hl7
            if s.kind != "hl7v2":
                continue
            if h.sending_application and h.sending_application == msh3 and (
                not h.sending_facility or h.sending_facility == msh4
            ):
                return s
            if h.sending_facility and not h.sending_application and h.sending_facility == msh4:
                best = best or s
        if best:
            return best
        for s in self.items:
            if port is not None and port in s.hl7.ports:
                return s
        return self.by_name["default"]

    def get(self, name: str) -> Source | None:
        return self.by_name.get(name)


def load_sources(mappings_dir: Path) -> tuple[Sources, list]:
    """Load ``sources.yaml`` if present; return (sources, diagnostics)."""
    path = mappings_dir / "sources.yaml"
    if not path.exists():
        return Sources([]), []
    sink = DiagnosticSink(str(path))
    try:
        raw = load_positioned(path)
    except YamlError as exc:
        return Sources([]), [exc.diagnostic]
    try:
        parsed = SourcesFile.model_validate(raw or {})
    except Exception as exc:  # pydantic.ValidationError
        exc._careloop_model = SourcesFile  # type: ignore[attr-defined]
        pydantic_errors_to_diagnostics(sink, raw, exc)
        return Sources([]), sink.items
    return Sources(list(parsed.sources)), sink.items
