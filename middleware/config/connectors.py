"""The settings of each built-in destination type (``destinations.yaml`` ``config:``), validated when
the mappings load. Configuration, not delivery: the loader checks them without importing the
connectors; each connector in ``delivery/connectors`` declares its ``Config`` from here.
Secrets are named (environment variable names), never given."""
from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HUBSPOT_API = "https://api.hubapi.com"


class WebhookConfig(BaseModel):
    """Settings of a ``webhook`` destination. Secrets are named, never given."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Receiver URL (http or https).")
    secret_env: str = Field(
        description="Env var holding the whsec_ secret; several names comma-separated "
        "(newest first) sign with each during a rotation."
    )
    thin: bool = Field(
        False,
        description="Thin payload: contact key, trigger name, time and a link the receiver fetches.",
    )
    link_base: str | None = Field(
        None, description="Base URL of the careloop API for thin links: {link_base}/api/triggers/{id}."
    )
    timeout_s: float = Field(15.0, gt=0, le=60, description="Per-request timeout (spec: 15–30 s).")

    @field_validator("url", "link_base")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _thin_needs_link(self) -> "WebhookConfig":
        if self.thin and not self.link_base:
            raise ValueError("thin: true needs link_base")
        return self

    def secret_names(self) -> list[str]:
        return [n.strip() for n in self.secret_env.split(",") if n.strip()]


class SfmcConfig(BaseModel):
    """Settings of an ``sfmc`` destination; credentials by env var name only."""

    model_config = ConfigDict(extra="forbid")

    subdomain: str = Field(description="Tenant subdomain of the auth/REST base URIs (Installed Packages).")
    client_id_env: str
    client_secret_env: str
    account_id: str | None = Field(None, description="MID of the target business unit (not a secret).")
    scope: str | None = None
    event_definition_key: str = Field(description="API entry event key; periods are not allowed.")
    rest_instance_url: str | None = Field(
        None, description="REST base URI; default: the token response's rest_instance_url."
    )
    token_margin_s: float = Field(60.0, ge=0, description="Refresh this long before expiry.")
    timeout_s: float = Field(20.0, gt=0, le=60)

    @field_validator("subdomain")
    @classmethod
    def _subdomain(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9-]{1,64}", v):
            raise ValueError("subdomain must be the tenant subdomain only (a-z, 0-9, -)")
        return v

    @field_validator("event_definition_key")
    @classmethod
    def _no_periods(cls, v: str) -> str:
        if not v or "." in v:
            raise ValueError("EventDefinitionKey must be non-empty and contain no periods")
        return v


class HubSpotConfig(BaseModel):
    """Settings of a ``hubspot`` destination; credentials by env var name only."""

    model_config = ConfigDict(extra="forbid")

    auth: Literal["private_app", "oauth"] = "private_app"
    access_token_env: str | None = Field(None, description="Private-app token (auth: private_app).")
    client_id_env: str | None = Field(None, description="OAuth app client id (auth: oauth).")
    client_secret_env: str | None = None
    refresh_token_env: str | None = None
    token_url: str = f"{HUBSPOT_API}/oauth/v1/token"
    event_name: str = Field(description="Fully qualified event name, pe{HubID}_{name}.")
    identity: Literal["email", "objectId", "utk"] = "objectId"
    identity_source: str = Field(
        "contact_key", description="'contact_key' or the payload key that holds the identity value."
    )
    upsert_contact: bool = False
    upsert_id_property: str = "email"
    contact_properties: list[str] = Field(
        default_factory=list, description="Payload keys copied to the contact on upsert (not to the event)."
    )
    token_margin_s: float = Field(60.0, ge=0)
    timeout_s: float = Field(20.0, gt=0, le=60)

    @field_validator("event_name")
    @classmethod
    def _qualified(cls, v: str) -> str:
        if not re.fullmatch(r"pe\d+_[A-Za-z0-9_\-]+", v):
            raise ValueError("event_name must be the fully qualified name pe{HubID}_{name}")
        return v

    @model_validator(mode="after")
    def _auth_fields(self) -> "HubSpotConfig":
        if self.auth == "private_app" and not self.access_token_env:
            raise ValueError("auth: private_app needs access_token_env")
        if self.auth == "oauth" and not (self.client_id_env and self.client_secret_env and self.refresh_token_env):
            raise ValueError("auth: oauth needs client_id_env, client_secret_env and refresh_token_env")
        return self


class BrazeConfig(BaseModel):
    """Settings of a ``braze`` destination; the REST key by env var name only."""

    model_config = ConfigDict(extra="forbid")

    rest_endpoint: str = Field(description="Instance REST endpoint, e.g. https://rest.iad-01.braze.com")
    api_key_env: str
    mode: Literal["track", "canvas"] = "track"
    event_name: str | None = Field(None, description="Custom event name; default: the trigger name.")
    canvas_id: str | None = Field(None, description="API-triggered Canvas id (mode: canvas).")
    external_id_source: str = Field("contact_key", description="'contact_key' or a payload key.")
    timeout_s: float = Field(20.0, gt=0, le=60)

    @model_validator(mode="after")
    def _check(self) -> "BrazeConfig":
        if not self.rest_endpoint.startswith("https://"):
            raise ValueError("rest_endpoint must be an https:// URL")
        if self.mode == "canvas" and not self.canvas_id:
            raise ValueError("mode: canvas needs canvas_id")
        return self


class SegmentConfig(BaseModel):
    """Settings of a ``segment`` destination; the write key by env var name only."""

    model_config = ConfigDict(extra="forbid")

    write_key_env: str
    endpoint: str = Field("https://api.segment.io", description="EU workspaces: https://events.eu1.segmentapis.com")
    call: Literal["track", "identify"] = "track"
    identity: Literal["userId", "anonymousId"] = "userId"
    event_name: str | None = Field(None, description="Track event name; default: the trigger name.")
    timeout_s: float = Field(15.0, gt=0, le=60)


class IterableConfig(BaseModel):
    """Settings of an ``iterable`` destination; the API key by env var name only."""

    model_config = ConfigDict(extra="forbid")

    api_key_env: str
    base_url: str = Field("https://api.iterable.com", description="EU projects: https://api.eu.iterable.com")
    identity: Literal["userId", "email"] = "userId"
    identity_source: str = Field("contact_key", description="'contact_key' or a payload key.")
    event_name: str | None = Field(None, description="Default: the trigger name.")
    campaign_id: int | None = None
    template_id: int | None = None
    timeout_s: float = Field(15.0, gt=0, le=60)


#: destination ``type`` -> its settings model (the connectors of ``delivery/connectors`` use the same)
CONNECTOR_CONFIGS: Mapping[str, type[BaseModel]] = MappingProxyType({
    "webhook": WebhookConfig, "sfmc": SfmcConfig, "hubspot": HubSpotConfig, "braze": BrazeConfig,
    "segment": SegmentConfig, "iterable": IterableConfig,
})
