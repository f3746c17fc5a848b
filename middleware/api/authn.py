"""Who is calling: named bearer tokens, failed-authentication logging and per-address throttling.

Tokens come from ``CARELOOP_API_TOKENS="name:token,..."`` and ``CARELOOP_API_TOKEN``
(name ``api``); the name is the admin-audit actor. ``CARELOOP_API_TOKEN_ROLES="name:role+role+perm,..."``
gives a token roles and extra permissions (config/roles.py); a token without an entry, and the
loopback caller when no token is configured, keep full access (admin), as before roles existed. Every failed authentication (a wrong
credential) is logged (client address, path, never the token) and counted; after ``auth_fail_limit`` failures
from one address within ``auth_fail_window_s`` seconds that address is answered 429 with
``Retry-After`` until the window has passed. Counts are per process (per replica).
"""
from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from fastapi import HTTPException, Request

from ..config.roles import ALL_PERMISSIONS, ROLES, permissions_of
from ..settings import Settings, api_token_map, api_token_roles_map

log = logging.getLogger("careloop.auth")

#: Client addresses tracked at once; the least recently failing is forgotten beyond this.
MAX_TRACKED = 10_000


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the token's configured name (``local`` when no token is configured),
    its roles and permissions (full access unless ``CARELOOP_API_TOKEN_ROLES`` names the token)."""

    actor: str
    client: str
    roles: tuple[str, ...] = ("admin",)
    permissions: frozenset[str] = ALL_PERMISSIONS

    @property
    def role_label(self) -> str:
        return "+".join(self.roles) or "none"


def token_grants(settings: Settings) -> dict[str, tuple[tuple[str, ...], frozenset[str]]]:
    """Each named token's roles and permissions from ``CARELOOP_API_TOKEN_ROLES``. Raises
    ValueError for a malformed entry, an unknown role or permission, or a name that is no token."""
    tokens = api_token_map(settings)
    out: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
    for name, items in api_token_roles_map(settings).items():
        unknown = [x for x in items if x not in ROLES and x not in ALL_PERMISSIONS]
        if unknown:
            raise ValueError(f"CARELOOP_API_TOKEN_ROLES: token '{name}' names unknown role or permission "
                             f"'{unknown[0]}' (roles: {', '.join(ROLES)})")
        if name not in tokens:
            raise ValueError(f"CARELOOP_API_TOKEN_ROLES names '{name}', which is no token in "
                             "CARELOOP_API_TOKENS / CARELOOP_API_TOKEN")
        roles = tuple(x for x in items if x in ROLES)
        out[name] = roles, permissions_of(roles, tuple(x for x in items if x not in ROLES))
    return out


class FailureThrottle:
    """Sliding-window count of failed authentications per client address (bounded memory)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()
        self.total = 0

    def _recent(self, client: str, now: float) -> deque[float]:
        q = self.failures.get(client)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str, now: float) -> int | None:
        """Seconds until ``client`` may try again, or None when it is not throttled."""
        q = self._recent(client, now)
        if self.limit <= 0 or len(q) < self.limit:
            return None
        return max(1, int(q[-self.limit] + self.window_s - now + 0.999))

    def throttled_clients(self, now: float) -> int:
        """Client addresses answered 429 right now."""
        return sum(1 for c in list(self.failures) if self.retry_after(c, now) is not None)

    def fail(self, client: str, now: float) -> bool:
        """Count one failure; True when this failure starts throttling ``client``."""
        self.total += 1
        q = self._recent(client, now)
        q.append(now)
        self.failures[client] = q
        self.failures.move_to_end(client)
        while len(self.failures) > MAX_TRACKED:
            self.failures.popitem(last=False)
        while len(q) > max(self.limit, 1):
            q.popleft()
        return len(q) == self.limit


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def throttle_for(request: Request) -> FailureThrottle:
    """The app's throttle (made on first use from the runtime's settings)."""
    rt = request.app.state.runtime
    th = getattr(rt, "auth_throttle", None)
    if th is None:
        s: Settings = rt.settings
        th = FailureThrottle(s.auth_fail_limit, s.auth_fail_window_s)
        rt.auth_throttle = th  # on the runtime, so /metrics can read it
    return th


def refuse_if_throttled(request: Request) -> None:
    """429 with Retry-After while the caller's address is throttled."""
    wait = throttle_for(request).retry_after(client_address(request), time.monotonic())
    if wait is not None:
        raise HTTPException(429, "too many failed authentications; retry later", headers={"Retry-After": str(wait)})


def authentication_failed(request: Request, what: str, presented: bool = True) -> None:
    """Log and count one failed authentication (address and path only, never the token).

    A request that presents no credential at all is answered 401 and logged at DEBUG, but
    not counted: it guesses nothing, and a browser opening ``/docs`` must not throttle itself."""
    client = client_address(request)
    if not presented:
        log.debug("no credential", extra={"action": "auth.missing", "client": client, "path": request.url.path})
        return
    started = throttle_for(request).fail(client, time.monotonic())
    log.warning("authentication failed", extra={"action": "auth.failed", "client": client,
                                                "path": request.url.path, "what": what})
    if started:
        _audit_throttle(request, client)


def _audit_throttle(request: Request, client: str) -> None:
    from ..delivery.admin_audit import record

    s: Settings = request.app.state.runtime.settings
    try:
        record(request.app.state.runtime.engine, actor="careloop", role="system", channel="api",
               action="auth.throttled", target_kind="client", target_id=client, client=client, outcome="refused",
               request_id=request_id(request),
               detail={"failures": s.auth_fail_limit, "window_s": s.auth_fail_window_s, "path": request.url.path})
    except Exception as exc:  # the throttle holds even when the audit cannot be written
        log.error("admin audit not written", extra={"action": "admin_audit.error", "error_type": type(exc).__name__})


def match_token(given: str, tokens: dict[str, str]) -> str | None:
    """The name of the token ``given`` equals (every token compared in constant time), else None."""
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(given.encode(), token.encode()):
            found = found or name
    return found


def bearer(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def authenticate(request: Request) -> Caller:
    """The caller, or 401 (logged, counted) / 429 (throttled). No token configured: anyone (loopback only)."""
    refuse_if_throttled(request)
    tokens = api_token_map(request.app.state.runtime.settings)
    if not tokens:
        caller = Caller("local", client_address(request))
    else:
        given = bearer(request)
        name = match_token(given, tokens) if given else None
        if name is None:
            authentication_failed(request, "api-token", presented=bool(given or request.headers.get("authorization")))
            raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        grant = token_grants(request.app.state.runtime.settings).get(name)
        caller = Caller(name, client_address(request)) if grant is None else Caller(name, client_address(request), *grant)
    request.state.caller = caller
    return caller


def request_id(request: Request) -> str:
    """``X-Request-ID`` when it is a short token, else a fresh one (kept on the request)."""
    rid = getattr(request.state, "request_id", None)
    if rid:
        return str(rid)
    given = request.headers.get("x-request-id", "")
    if not (0 < len(given) <= 64 and all(c.isalnum() or c in "-_." for c in given)):
        import uuid

        given = uuid.uuid4().hex
    request.state.request_id = given
    return given
