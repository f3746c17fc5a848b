"""Destinations (``mappings/destinations.yaml``): connector type, its config, the BAA
flag and the minimum-necessary policy. Credentials appear only as env var names."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .connectors import CONNECTOR_CONFIGS
from .. import purposes
from .outbound import check_url, load_policy
from .yamlpos import Diagnostic, DiagnosticSink, YamlError, load_positioned, pydantic_errors_to_diagnostics

#: Connector config fields that hold a URL careloop connects to (checked against the outbound policy).
URL_FIELDS = ("url", "endpoint", "base_url", "rest_endpoint", "rest_instance_url", "token_url")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(_Strict):
    """What may leave for this destination. Deny by default: only ``allow`` fields go out."""

    mode: Literal["fields", "thin"] = "fields"
    allow: list[str] = Field(default_factory=list, description="payload field paths allowed (dotted for nested)")
    identifiers: Literal["pseudonymous", "mrn"] = "pseudonymous"
    purposes: list[str] = Field(
        default_factory=lambda: list(purposes.ALL)
    )


class ExitSettings(_Strict):
    """``exit:`` (issue 17): tell this destination when a patient leaves a journey it received, or an
    entry it received is cancelled by a later clinical event, or the patient dies. The exit is
    generic: the pseudonymous key and ids only, never a reason (a reason is health information)."""

    event_name: str = Field("careloop_exit", pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description=(
        "the exit event's name (webhook type, Segment/Iterable event, Braze custom event: name it in the "
        "Canvas as an exception event)"))
    journey_key: str | None = Field(None, description="Journey Builder: the journey's DefinitionKey (sfmc; required)")
    versions: list[int] = Field(default_factory=list, description="Journey Builder: versions to exit (default: all)")
    property: str | None = Field(None, pattern=r"^[a-z0-9_]{1,100}$", description=(
        "HubSpot: the contact property the workflow's unenrollment criteria use (hubspot; required); "
        "set to the exit time"))
    confirm_within_s: float = Field(3600.0, gt=0, description=(
        "where the vendor can confirm (Journey Builder's contact-exit status): an exit not confirmed within "
        "this long is marked unconfirmed and raises an alert"))
    poll_every_s: float = Field(60.0, gt=0, description="how often a pending confirmation is polled")


class Destination(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    type: str
    baa: bool = Field(description="a business associate agreement covers this destination")
    enabled: bool = True
    policy: Policy = Field(default_factory=Policy)
    config: dict[str, Any] = Field(default_factory=dict)
    allow_private_network: bool = Field(
        False,
        description="allow loopback and private addresses (127/8, ::1, 10/8, 172.16/12, 192.168/16, fc00::/7, "
        "100.64/10, 0.0.0.0); link-local and metadata addresses and careloop's own ports stay refused",
    )
    #: Base 30 s doubling to a 6 h cap: 20 attempts span about 2.6 days
    #: (the first 10 waits sum to 30·(2^10−1) s ≈ 8.5 h, then 9 waits of 6 h = 54 h).
    max_attempts: int = 20
    backoff_base_s: float = 30.0
    backoff_max_s: float = 6 * 3600.0
    dedup: Literal["auto", "receiver", "ledger"] = Field(
        "auto",
        description="after a crash between sending and recording: 'receiver' re-sends the same idempotency key "
        "(the destination de-duplicates: Segment messageId, Iterable id, Standard Webhooks webhook-id); "
        "'ledger' never sends twice and marks the delivery unconfirmed; 'auto' picks by connector",
    )
    max_concurrency: int | None = Field(None, ge=1, description="concurrent requests; default: the connector's")
    rate_per_s: float | None = Field(None, gt=0, description="token-bucket rate; default: the connector's documented limit")
    exit: ExitSettings | None = Field(None, description="send exits to this destination (docs/destinations.md)")

    @model_validator(mode="after")
    def _exit_needs(self) -> "Destination":
        if self.exit is None:
            return self
        if self.type == "sfmc" and not self.exit.journey_key:
            raise ValueError("exit: Journey Builder needs journey_key (the journey's DefinitionKey)")
        if self.type == "hubspot":
            if not self.exit.property:
                raise ValueError("exit: HubSpot needs property (the contact property the workflow's unenrollment uses)")
            if self.config.get("identity") == "utk":
                raise ValueError("exit: HubSpot contacts identified by utk cannot be updated; use identity objectId or email")
        return self


class DestinationsFile(_Strict):
    destinations: list[Destination] = Field(default_factory=list)


def load_destinations(mappings_dir: Path) -> tuple[list[Destination], list[Diagnostic], Any]:
    """Return (destinations, diagnostics, raw positioned YAML)."""
    path = mappings_dir / "destinations.yaml"
    if not path.exists():
        return [], [], None
    sink = DiagnosticSink(str(path))
    try:
        raw = load_positioned(path)
    except YamlError as exc:
        return [], [exc.diagnostic], None
    try:
        parsed = DestinationsFile.model_validate(raw or {})
    except Exception as exc:
        exc._careloop_model = DestinationsFile  # type: ignore[attr-defined]
        pydantic_errors_to_diagnostics(sink, raw, exc)
        return [], sink.items, raw
    # connector-specific config validated against the destination type's settings model
    types = CONNECTOR_CONFIGS
    seen: set[str] = set()
    for i, d in enumerate(parsed.destinations):
        node = raw["destinations"][i]
        if d.name in seen:
            sink.error(node, "name", "duplicate-destination", f"destination '{d.name}' is defined twice")
        seen.add(d.name)
        model = types.get(d.type)
        if model is None:
            import difflib

            hint = difflib.get_close_matches(d.type, list(types), n=1)
            sink.error(node, "type", "unknown-connector", f"unknown destination type '{d.type}'"
                       + (f" (did you mean '{hint[0]}'?)" if hint else f"; known: {', '.join(sorted(types))}"))
            continue
        try:
            cfg = model.model_validate(d.config)
        except Exception as exc:
            exc._careloop_model = model  # type: ignore[attr-defined]
            sub = DiagnosticSink(str(path))
            pydantic_errors_to_diagnostics(sub, node.get("config", node), exc)
            sink.items.extend(sub.items)
            continue
        _check_urls(sink, node.get("config", node), cfg, d.allow_private_network)
    return list(parsed.destinations), sink.items, raw


def _check_urls(sink: DiagnosticSink, node: Any, cfg: BaseModel, allow_private: bool) -> None:
    """Every URL field of a connector config must pass the outbound policy (see ``docs/destinations.md``)."""
    policy = load_policy(allow_private)
    for key in URL_FIELDS:
        check_url(sink, node, key, getattr(cfg, key, None), policy)
