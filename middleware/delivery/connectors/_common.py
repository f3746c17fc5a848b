"""Helpers shared by the built-in connectors: HTTP calls, token caching, outcome mapping.

Only ids and actions are logged here, never bodies, headers or credentials.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from ... import netpolicy
from ..registry import AuthFailure, Outcome, Retry, SecretSource

log = logging.getLogger("middleware.delivery.connectors")


def _remember_missing_sniffio() -> None:
    """httpcore runs ``import sniffio`` (falling back to asyncio when it is absent) each time it
    sets up a lock or event, about five times per request. Without sniffio installed, every
    one of those failed imports searches ``sys.path`` again (~80 µs each). Recording the
    absence in ``sys.modules`` makes the same ``ImportError`` immediate; nothing changes
    when sniffio is installed."""
    try:
        import sniffio  # noqa: F401
    except ImportError:
        sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


_remember_missing_sniffio()

#: In-call retries are only for connection errors (the request never left): 2 tries, 0.2 s apart.
CONNECT_TRIES = 2
CONNECT_WAIT_S = 0.2


class MissingSecret(Exception):
    """A credential named in the config is not set; mapped to :class:`AuthFailure`."""


def require_secret(secrets: SecretSource, env_name: str) -> str:
    """Resolve ``env_name`` through ``secrets`` or raise :class:`MissingSecret` (name only in the message)."""
    value = secrets.get(env_name)
    if not value:
        raise MissingSecret(f"secret {env_name} is not set (environment variable or {env_name}_FILE)")
    return value


async def send_request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    timeout_s: float,
    **kwargs: Any,
) -> httpx.Response:
    """One HTTP request, retried once in-call only if the connection could not be made.

    Raises the last :class:`httpx.TransportError` (timeouts are never retried here:
    the vendor may have processed the request).
    """
    for attempt in range(1, CONNECT_TRIES + 1):
        try:
            # never follow redirects: httpx strips only Authorization on a cross-origin hop, not
            # API-key headers or signatures; a 3xx is the connector's outcome to classify
            return await http.request(method, url, timeout=timeout_s, follow_redirects=False, **kwargs)
        except httpx.ConnectError as exc:
            if attempt >= CONNECT_TRIES or netpolicy.refusal_of(exc):
                raise
        await asyncio.sleep(CONNECT_WAIT_S)
    raise AssertionError("unreachable")  # pragma: no cover


def transport_outcome(exc: Exception) -> Outcome:
    """Map an exception raised while calling a vendor to an outcome.

    Timeouts and connection failures → :class:`Retry`; a missing credential →
    :class:`AuthFailure`. Anything else is re-raised by the caller's ``except``.
    """
    if isinstance(exc, MissingSecret):
        return AuthFailure(str(exc))
    if isinstance(exc, httpx.TimeoutException):
        return Retry(f"timeout ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        refused = netpolicy.refusal_of(exc)
        if refused:  # names the host and the range, never a path or a body
            return Retry(refused)
        return Retry(f"connection error ({type(exc).__name__})")
    raise exc


def safe_json(resp: httpx.Response) -> Any:
    """The decoded JSON body, or ``None`` when it is empty or malformed."""
    if not resp.content:
        return None
    try:
        return resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None


def iso_z(dt: datetime) -> str:
    """An aware datetime as ISO 8601 UTC with a ``Z`` suffix, millisecond precision."""
    if dt.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def same_for_all(outcome: Outcome, n: int) -> list[Outcome]:
    """A batch-level outcome applied to every item (vendor gave no per-item result)."""
    return [outcome] * n


def finish(items: Sequence[Any], results: Sequence[Outcome | None], *, logger: logging.Logger, action: str,
           destination: str) -> list[Outcome]:
    """Fill items no step answered with ``Permanent("not sent")`` and log one id-only line per item."""
    from ..registry import Permanent

    final: list[Outcome] = [o if o is not None else Permanent("not sent") for o in results]
    for item, outcome in zip(items, final):
        logger.info(action, extra={"action": action, "destination": destination,
                                   "delivery_id": item.delivery_id, "outcome": type(outcome).__name__})
    return final


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``seq`` cut into consecutive slices of at most ``size``."""
    return [seq[i : i + size] for i in range(0, len(seq), size)]


@dataclass
class CachedToken:
    value: str
    expires_at: datetime

    def fresh(self, now: datetime) -> bool:
        return now < self.expires_at


class TokenCache:
    """One access token per connector instance, refreshed before ``expires_in`` runs out.

    ``fetch`` returns ``(token, expires_in_seconds)``. Concurrent callers share one
    fetch (a lock), so a burst of sends makes one token request.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[str, float]]],
        clock: Callable[[], datetime],
        margin_s: float = 60.0,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin_s = margin_s
        self._token: CachedToken | None = None
        self._lock = asyncio.Lock()

    async def get(self, *, force: bool = False, stale: str | None = None) -> str:
        """A valid token; ``force`` refetches unless another caller already replaced ``stale``."""
        async with self._lock:
            now = self._clock()
            tok = self._token
            if tok is not None and tok.fresh(now):
                if not force or (stale is not None and tok.value != stale):
                    return tok.value
            value, expires_in = await self._fetch()
            life = max(0.0, float(expires_in) - self._margin_s)
            if float(expires_in) <= self._margin_s:
                life = float(expires_in) / 2  # very short tokens: use half their life
            self._token = CachedToken(value, self._clock() + timedelta(seconds=life))
            return value

    def invalidate(self) -> None:
        self._token = None


class TokenError(Exception):
    """The token endpoint answered with a failure; ``outcome`` says what to do."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(getattr(outcome, "reason", "token error"))
        self.outcome = outcome
