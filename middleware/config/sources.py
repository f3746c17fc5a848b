"""Inbound sources (``mappings/sources.yaml``): one per feed, HL7v2 or FHIR.

An HL7v2 source is matched by MLLP listener port or by MSH-3/MSH-4; a FHIR source
names the server careloop subscribes to. A source named ``default`` always exists.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .listeners import MllpListenerConfig, address_in, check_listeners, default_listener, networks, parse_networks
from .yamlpos import Diagnostic, DiagnosticSink, YamlError, load_positioned, pydantic_errors_to_diagnostics

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
    allow_from: list[str] = Field(
        default_factory=list,
        description="client addresses (CIDR) this source accepts MLLP connections from; empty: any",
    )
    tls_subjects: list[str] = Field(
        default_factory=list,
        description="client certificate CN or DNS name that selects this source on an MLLP/TLS listener",
    )

    @field_validator("allow_from")
    @classmethod
    def _cidr(cls, v: list[str]) -> list[str]:
        return parse_networks(v)

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
    allow_private_network: bool = Field(
        default=False,
        description="allow a base_url on loopback or a private address; link-local and metadata stay refused",
    )
    credential_hosts: list[str] = Field(
        default_factory=list,
        description="origins (https://host[:port]) besides base_url's that may receive this source's credentials "
        "(paging links, redirects, Bulk export files)",
    )


class Source(_Strict):
    name: str
    kind: Literal["hl7v2", "fhir"] = "hl7v2"
    timezone: str = "UTC"
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)

    def notification_token_env(self) -> str:
        """The environment variable holding the token this FHIR source sends with its notifications
        (``fhir.notification_token_env``, default ``CARELOOP_FHIR_TOKEN_<SOURCE>``)."""
        return self.fhir.notification_token_env or "CARELOOP_FHIR_TOKEN_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())


class SourcesFile(_Strict):
    sources: list[Source] = Field(default_factory=list)
    listeners: list[MllpListenerConfig] = Field(default_factory=list, description="MLLP ports: limits, TLS, PROXY protocol")


# The source an MLLP connection is bound to (by port or client certificate) and its client
# address, while the listener decides one of its frames (see :meth:`Sources.bind`).
_BOUND: ContextVar[tuple[str | None, str | None]] = ContextVar("careloop_bound_source", default=(None, None))


class Sources:
    """The configured sources with lookup by port / MSH-3 / MSH-4 / name."""

    def __init__(self, items: list[Source], listeners: list[MllpListenerConfig] | None = None) -> None:
        names = {s.name for s in items}
        if "default" not in names:
            items = [Source(name="default"), *items]
        self.items = items
        self.by_name = {s.name: s for s in items}
        self.listeners = {x.port: x for x in (listeners or [])}
        self._nets = {s.name: networks(s.hl7.allow_from) for s in items if s.hl7.allow_from}

    # -- MLLP connections -----------------------------------------------------
    def listener(self, port: int) -> MllpListenerConfig:
        """The configuration of the MLLP listener on ``port`` (defaults when not listed)."""
        return self.listeners.get(port) or default_listener(port)

    def mllp_ports(self) -> set[int]:
        """Ports named by a source (``hl7.ports``) or a ``listeners:`` entry."""
        return {p for s in self.items for p in s.hl7.ports} | set(self.listeners)

    def for_port(self, port: int) -> Source | None:
        """The source owning an MLLP port (``hl7.ports``), if any."""
        return next((s for s in self.items if s.kind == "hl7v2" and port in s.hl7.ports), None)

    def for_tls_subject(self, names: list[str]) -> Source | None:
        """The source whose ``tls_subjects`` lists one of a client certificate's names (CN, DNS)."""
        return next((s for s in self.items if s.kind == "hl7v2" and set(s.hl7.tls_subjects) & set(names)), None)

    def allows(self, source: Source, addr: str | None) -> bool:
        """Whether ``source`` accepts a connection from ``addr`` (no allow-list: everyone)."""
        nets = self._nets.get(source.name)
        return nets is None or (addr is not None and address_in(addr, nets))

    @contextmanager
    def bind(self, source: str | None, peer: str | None) -> Iterator[None]:
        """While inside, :meth:`for_hl7` returns ``source`` (a connection bound by port or
        certificate), or skips sources whose allow-list excludes ``peer``."""
        token = _BOUND.set((source, peer))
        try:
            yield
        finally:
            _BOUND.reset(token)

    def for_hl7(self, port: int | None, msh3: str | None, msh4: str | None) -> Source:
        """The source an HL7v2 message belongs to: the connection's bound source, else MSH-3/MSH-4
        match (among sources that allow the connection's address), then port, then default."""
        bound, peer = _BOUND.get()
        if bound is not None and bound in self.by_name:
            return self.by_name[bound]
        best = None
        for s in self.items:
            h = s.hl7
            if s.kind != "hl7v2" or (peer is not None and not self.allows(s, peer)):
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


def load_sources(mappings_dir: Path) -> tuple[Sources, list[Diagnostic]]:
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
    _check_fhir_urls(sink, raw, parsed)
    listeners = list(parsed.listeners)
    raw_listeners = raw.get("listeners") if isinstance(raw, dict) else None
    for i, key, code, message in check_listeners(listeners):
        node = raw_listeners[i] if isinstance(raw_listeners, list) and i < len(raw_listeners) else raw
        sink.error(node, key, code, message)
    if sink.has_errors:
        return Sources([]), sink.items
    return Sources(list(parsed.sources), listeners), sink.items


def _check_fhir_urls(sink: DiagnosticSink, raw: Any, parsed: SourcesFile) -> None:
    """FHIR ``base_url``, ``auth.token_url`` and ``credential_hosts`` must pass the outbound policy."""
    from .outbound import check_url, load_policy

    for i, src in enumerate(parsed.sources):
        node = raw["sources"][i].get("fhir")
        if node is None:
            continue
        policy = load_policy(src.fhir.allow_private_network)
        check_url(sink, node, "base_url", src.fhir.base_url, policy)
        check_url(sink, node.get("auth", node), "token_url", src.fhir.auth.token_url, policy)
        hosts = node.get("credential_hosts") or []
        for j, url in enumerate(src.fhir.credential_hosts):
            check_url(sink, hosts if hosts else node, j if hosts else "credential_hosts", url, policy,
                      label="credential_hosts")
