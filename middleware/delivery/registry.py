"""The connector contract and registry.

A connector turns already-projected :class:`Outbound` items (the PHI policy has run)
into vendor API calls and answers one :data:`Outcome` per item, in order. It never
sleeps for a retry: it returns :class:`Retry` with ``after_s`` (Retry-After) and the
durable worker schedules the next attempt. Short in-call retries (a dropped
connection, one OAuth token refresh) are the connector's own business (tenacity).

    @register
    class MyConnector(Connector):
        type_name = "mine"
        Config = MyConfig
        async def send_batch(self, items): ...
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Union

import httpx
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..config.destinations import ExitSettings


class Outbound(BaseModel):
    """One delivery to send: references and the policy-projected payload only."""

    model_config = ConfigDict(frozen=True)

    delivery_id: int
    idempotency_key: str  # stable across retries; derived from business facts
    destination: str
    trigger_id: int
    trigger_name: str
    rule_id: str
    purpose: str
    contact_key: str  # pseudonymous (HMAC) unless the policy allows an identifier
    payload: dict[str, Any]
    occurred_at: datetime
    attempt: int = 1


@dataclass(frozen=True)
class Delivered:
    """The vendor took it. ``confirmation`` says what its answer proves when that is less than final
    (``statuses.Confirmation``: ``accepted`` with no documented lookup, ``pending`` while a status
    endpoint is polled); ``vendor_ref`` is the vendor's id for it (e.g. an eventInstanceId)."""

    status_code: int | None = None
    detail: str = ""
    confirmation: str | None = None
    vendor_ref: str | None = None


@dataclass(frozen=True)
class ExitCheck:
    """The vendor's view of an exit being confirmed: ``confirmed``, still ``pending``, or ``failed``
    (with the vendor's message); one per exit, in order."""

    state: Literal["confirmed", "pending", "failed"]
    detail: str = ""


@dataclass(frozen=True)
class Retry:
    """Transient failure: try again after ``after_s`` seconds (None = worker's backoff)."""

    reason: str
    after_s: float | None = None
    status_code: int | None = None


@dataclass(frozen=True)
class Permanent:
    """Will never succeed as sent (4xx other than 408/429, validation failure): dead-letter."""

    reason: str
    status_code: int | None = None


@dataclass(frozen=True)
class AuthFailure:
    """Static credentials refused (401/403): open the circuit and raise an alert."""

    reason: str
    status_code: int | None = None


@dataclass(frozen=True)
class Disable:
    """The endpoint asked to be removed (webhook 410 Gone): disable the destination."""

    reason: str
    status_code: int | None = None


Outcome = Union[Delivered, Retry, Permanent, AuthFailure, Disable]



class SecretSource:
    """Credentials from the environment or from ``<VAR>_FILE`` secret files; never stored or logged."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env

    def get(self, name: str | None, default: str | None = None) -> str | None:
        if not name:
            return default
        val = self._env.get(name)
        if val:
            return val
        file_path = self._env.get(name + "_FILE")
        if file_path and Path(file_path).exists():
            return Path(file_path).read_text(encoding="utf-8").strip()
        return default

    def require(self, name: str) -> str:
        val = self.get(name)
        if not val:
            raise KeyError(f"secret {name} is not set (environment variable or {name}_FILE)")
        return val


@dataclass(frozen=True)
class RateLimit:
    """Token bucket: ``rate`` requests per second with ``burst`` capacity."""

    rate: float
    burst: int


class Connector(ABC):
    """Base of every destination connector."""

    type_name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    max_batch: ClassVar[int] = 1
    rate_limit: ClassVar[RateLimit] = RateLimit(rate=50.0, burst=50)
    max_concurrency: ClassVar[int] = 4
    #: True when the destination de-duplicates on our idempotency key natively
    native_dedup: ClassVar[bool] = False
    #: exits sent in one call (Journey Builder's contact exit takes 50)
    max_exit_batch: ClassVar[int] = 1
    #: the destination's ``exit:`` settings (set by the worker; None: exits are not configured)
    exit_settings: "ExitSettings | None" = None

    def __init__(
        self,
        name: str,
        config: BaseModel,
        http: httpx.AsyncClient,
        secrets: SecretSource | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        from datetime import timezone

        self.name = name
        self.config = config
        self.http = http
        self.secrets = secrets or SecretSource()
        self.clock = clock or (lambda: datetime.now(timezone.utc))

    @abstractmethod
    async def send_batch(self, items: list[Outbound]) -> list[Outcome]:
        """Send up to ``max_batch`` items; return one outcome per item in order."""

    async def send_exits(self, items: list[Outbound]) -> list[Outcome]:
        """Take each item's contact out of the destination's journey (``items``: exits, up to
        ``max_exit_batch``; ``trigger_name`` is the exit event's name, ``payload`` holds ids only).
        A connector without an exit mechanism refuses, and the exit is dead-lettered with the reason."""
        return [Permanent(f"{self.type_name} destinations have no exit mechanism in careloop") for _ in items]

    async def confirm_exits(self, items: list[Outbound]) -> list[ExitCheck]:
        """Ask the vendor whether each exit (answered ``pending`` before) took effect."""
        return [ExitCheck("confirmed", "no confirmation step") for _ in items]

    async def aclose(self) -> None:  # pragma: no cover - default no-op
        return None


_REGISTRY: dict[str, type[Connector]] = {}


def register(cls: type[Connector]) -> type[Connector]:
    """Class decorator: make a connector available by its ``type_name``."""
    _REGISTRY[cls.type_name] = cls
    return cls


def connector_types() -> dict[str, type[Connector]]:
    """All registered connector classes (importing the built-in ones first)."""
    from . import connectors  # noqa: F401  (registers built-ins)

    return dict(_REGISTRY)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Parse a Retry-After header (delta-seconds or HTTP-date) into seconds, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from datetime import timezone

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def classify_http(resp: httpx.Response, *, oauth: bool = False) -> Outcome:
    """Default mapping of an HTTP answer to an outcome (2xx ok; 408/429/5xx retry; 401 auth; 410 disable)."""
    code = resp.status_code
    if 200 <= code < 300:
        return Delivered(code)
    if code in (408, 429) or code >= 500:
        return Retry(f"HTTP {code}", retry_after_seconds(resp.headers.get("Retry-After")), code)
    if code in (401, 403) and not oauth:
        return AuthFailure(f"HTTP {code}: credentials refused", code)
    if code == 410:
        return Disable("HTTP 410 Gone", code)
    return Permanent(f"HTTP {code}", code)


@dataclass
class DestinationRuntime:
    """A configured destination with its connector instance (built by the worker)."""

    name: str
    connector: Connector
    extra: dict[str, Any] = field(default_factory=dict)
