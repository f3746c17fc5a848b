"""Console sign-in through OpenID Connect: the relying party's side of the authorization code flow
with PKCE (RFC 7636, S256), discovery, the issuer's JWKS (re-read once on an unknown ``kid``: key
rotation) and the ID token checks of OpenID Connect Core 3.1.3.7.

What is checked on the ID token: the signature (an asymmetric algorithm from :data:`ALGORITHMS` only;
never ``none`` nor an HMAC keyed with a public key; the key chosen by ``kid`` and matching the
algorithm's key type), ``iss`` equal to the configured issuer, ``aud`` containing the client id (and
``azp`` equal to it when there are several audiences or ``azp`` is present), ``exp`` / ``iat`` / ``nbf``
with a small leeway, ``sub`` present, and ``nonce`` equal to the one this sign-in sent.

Outbound requests go only to the issuer's host (plus ``console_oidc_extra_hosts``), with the
issuer's scheme (https; http only for a loopback issuer), through :mod:`middleware.netpolicy`'s
pinned client (no proxy variables, no redirects, metadata addresses refused) with a timeout.

JOSE is joserfc's (typed, maintained). Nothing here logs or returns a token; errors carry a short
``code`` for the audit and a sentence for the page.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import httpx
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError, ClaimError, ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError,
)
from joserfc.jwk import Key, KeySet

from .. import netpolicy
from ..settings import Settings
from .access import ROLES

#: ID token signature algorithms accepted (asymmetric only: the client verifies with the issuer's public keys).
ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
#: A pending sign-in (state, nonce, PKCE verifier) lives this long between /signin/oidc and the callback.
PENDING_TTL_S = 600.0
_PENDING_MAX = 10_000
_MAX_DOCUMENT_BYTES = 512 * 1024
_LOOPBACK_NAMES = ("localhost",)


class OidcConfigError(ValueError):
    """The ``console_oidc_*`` settings are inconsistent; the message names the setting."""


class OidcError(Exception):
    """A sign-in that cannot complete: ``code`` goes to the admin audit, ``message`` to the page."""

    def __init__(self, code: str, message: str, status: int = 401) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class OidcConfig:
    """The OIDC settings, parsed and checked once."""

    issuer: str
    client_id: str
    client_secret: str | None
    token_auth: str
    scopes: str
    roles_claim: tuple[str, ...]
    role_map: dict[str, tuple[str, ...]]
    name_claim: str | None
    redirect_url: str | None
    display_name: str
    hosts: frozenset[tuple[str, str, int]]
    timeout_s: float
    cache_ttl_s: float
    leeway_s: int

    @classmethod
    def from_settings(cls, s: Settings) -> "OidcConfig | None":
        """None when OIDC is off (no issuer); raises :class:`OidcConfigError` naming a bad setting."""
        if not s.console_oidc_issuer:
            return None
        issuer = s.console_oidc_issuer.strip()
        parts = urlsplit(issuer)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise OidcConfigError("CARELOOP_CONSOLE_OIDC_ISSUER must be an https URL without query or fragment")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise OidcConfigError("CARELOOP_CONSOLE_OIDC_ISSUER: http is allowed for a loopback issuer only; use https")
        if not s.console_oidc_client_id:
            raise OidcConfigError("CARELOOP_CONSOLE_OIDC_CLIENT_ID is required with CARELOOP_CONSOLE_OIDC_ISSUER")
        if s.console_oidc_token_auth not in ("client_secret_basic", "client_secret_post"):
            raise OidcConfigError("CARELOOP_CONSOLE_OIDC_TOKEN_AUTH must be client_secret_basic or client_secret_post")
        scopes = s.console_oidc_scopes.split()
        if "openid" not in scopes:
            scopes.insert(0, "openid")
        hosts = {netpolicy.origin_of(issuer)}
        for extra in (s.console_oidc_extra_hosts or "").split(","):
            if extra.strip():
                hosts.add((parts.scheme, extra.strip().lower(), netpolicy.default_port(parts.scheme)))
        claim_path = tuple(p for p in s.console_oidc_roles_claim.strip().split(".") if p)
        if not claim_path:
            raise OidcConfigError("CARELOOP_CONSOLE_OIDC_ROLES_CLAIM is empty")
        return cls(
            issuer=issuer, client_id=s.console_oidc_client_id, client_secret=s.console_oidc_client_secret or None,
            token_auth=s.console_oidc_token_auth, scopes=" ".join(scopes), roles_claim=claim_path,
            role_map=parse_role_map(s.console_oidc_role_map), name_claim=s.console_oidc_name_claim or None,
            redirect_url=s.console_oidc_redirect_url or None,
            display_name=(s.console_oidc_display_name or parts.hostname or issuer)[:80],
            hosts=frozenset(hosts), timeout_s=s.console_oidc_timeout_s, cache_ttl_s=s.console_oidc_cache_ttl_s,
            leeway_s=s.console_oidc_leeway_s)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_role_map(text: str) -> dict[str, tuple[str, ...]]:
    """``"idp-a:operator,idp-b:analyst,idp-b:auditor"`` -> {idp value: careloop roles}. The last ``:``
    splits, so IdP values may contain colons (URNs); every careloop role must be a known one."""
    out: dict[str, tuple[str, ...]] = {}
    for i, entry in enumerate(text.split(","), 1):
        entry = entry.strip()
        if not entry:
            continue
        value, sep, role = entry.rpartition(":")
        value, role = value.strip(), role.strip()
        if not sep or not value or not role:
            raise OidcConfigError(f"CARELOOP_CONSOLE_OIDC_ROLE_MAP entry {i} is not 'idp-value:careloop-role'")
        if role not in ROLES:
            raise OidcConfigError(f"CARELOOP_CONSOLE_OIDC_ROLE_MAP entry {i}: unknown role {role!r} (one of {', '.join(ROLES)})")
        if role not in out.get(value, ()):
            out[value] = (*out.get(value, ()), role)
    return out


def claim_at(claims: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a dotted path (``realm_access.roles``), or None."""
    cur: Any = claims
    for part in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def map_roles(cfg: OidcConfig, claims: dict[str, Any]) -> tuple[str, ...]:
    """careloop roles for the IdP values in the roles claim (a list, or one string); others are ignored."""
    raw = claim_at(claims, cfg.roles_claim)
    values = [raw] if isinstance(raw, str) else [v for v in raw if isinstance(v, str)] if isinstance(raw, list) else []
    roles: list[str] = []
    for v in values:
        for role in cfg.role_map.get(v, ()):
            if role not in roles:
                roles.append(role)
    return tuple(r for r in ROLES if r in roles)


def user_name(cfg: OidcConfig, claims: dict[str, Any]) -> str:
    """The name the console and the audit show: the configured claim, else preferred_username, else sub."""
    for name in ((cfg.name_claim,) if cfg.name_claim else ("preferred_username", "sub")):
        value = claims.get(name)
        if isinstance(value, str) and value.strip():
            return "".join(c for c in value.strip() if c.isprintable())[:100]
    raise OidcError("no_name", "The identity provider did not say who you are (no user name claim).")


def code_challenge(verifier: str) -> str:
    """The S256 ``code_challenge`` of a PKCE ``code_verifier`` (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# -- pending sign-ins -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pending:
    """What one sign-in keeps server-side between the redirect to the issuer and the callback."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    created: float = field(default_factory=time.time)


class PendingStore:
    """Pending sign-ins by the SHA-256 of a random handle (the cookie holds the handle only):
    short-lived and single-use (``take`` removes). In the process: a restart drops sign-ins in flight."""

    def __init__(self, ttl_s: float = PENDING_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, Pending] = {}

    @staticmethod
    def _key(handle: str) -> str:
        return hashlib.sha256(handle.encode()).hexdigest()

    def put(self, pending: Pending) -> str:
        """Keep ``pending``; return the handle for the cookie."""
        handle = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            for k in [k for k, p in self._items.items() if now - p.created > self._ttl]:
                del self._items[k]
            while len(self._items) >= _PENDING_MAX:
                del self._items[next(iter(self._items))]
            self._items[self._key(handle)] = pending
        return handle

    def take(self, handle: str) -> Pending | None:
        """The pending sign-in for ``handle`` (removed: single-use), or None when unknown or expired."""
        with self._lock:
            found = self._items.pop(self._key(handle), None)
        if found is None or self._clock() - found.created > self._ttl:
            return None
        return found


# -- the issuer -----------------------------------------------------------------------------------
class Provider:
    """One configured issuer: discovery and JWKS (cached for ``cache_ttl_s``), the authorization URL,
    the code exchange and the ID token checks."""

    def __init__(self, cfg: OidcConfig, *, clock: Callable[[], float] = time.time,
                 client: Callable[[], httpx.Client] | None = None) -> None:
        self.cfg = cfg
        self._clock = clock
        self._client = client or (lambda: netpolicy.guarded_client(netpolicy.policy(True), timeout=cfg.timeout_s))
        self._lock = threading.Lock()
        self._discovery: tuple[float, dict[str, Any]] | None = None
        self._jwks: tuple[float, KeySet] | None = None
        self.jwks_fetches = 0

    # - HTTP ---------------------------------------------------------------------------------------
    def _check_url(self, url: str, what: str) -> None:
        try:
            origin = netpolicy.origin_of(url)
        except (httpx.InvalidURL, ValueError):
            raise OidcError("bad_discovery", f"The identity provider's {what} is not a valid URL.", 502) from None
        if origin not in self.cfg.hosts:
            raise OidcError("foreign_host", f"The identity provider's {what} ({origin[1]}) is not on the issuer's host; "
                            "careloop contacts the issuer's host only (see CARELOOP_CONSOLE_OIDC_EXTRA_HOSTS).", 502)

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        if len(response.content) > _MAX_DOCUMENT_BYTES:
            raise OidcError("too_large", f"The identity provider's {what} is too large.", 502)
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise OidcError("bad_response", f"The identity provider's {what} is not a JSON object.", 502)
        return doc

    def _get(self, url: str, what: str) -> dict[str, Any]:
        self._check_url(url, what)
        try:
            with self._client() as c:
                r = c.get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            why = netpolicy.refusal_of(exc) or type(exc).__name__
            raise OidcError("unreachable", f"The identity provider could not be reached for its {what} ({why}).", 502) from None
        if r.status_code != 200:
            raise OidcError("bad_response", f"The identity provider answered {r.status_code} for its {what}.", 502)
        return self._json(r, what)

    # - discovery and keys -------------------------------------------------------------------------
    def discovery(self) -> dict[str, Any]:
        """The issuer's metadata; its ``issuer`` must equal the configured one, its endpoints be on allowed hosts."""
        now = self._clock()
        with self._lock:
            if self._discovery and now - self._discovery[0] < self.cfg.cache_ttl_s:
                return self._discovery[1]
        doc = self._get(self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document")
        if doc.get("issuer") != self.cfg.issuer:
            raise OidcError("issuer_mismatch", "The identity provider's discovery document names another issuer than "
                            "the configured one; sign-in is refused.", 502)
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str):
                raise OidcError("bad_discovery", f"The identity provider's discovery document has no {name}.", 502)
            self._check_url(value, name)
        with self._lock:
            self._discovery = (now, doc)
        return doc

    def jwks(self, *, refresh: bool = False) -> KeySet:
        """The issuer's signing keys (cached; ``refresh`` reads them again)."""
        now = self._clock()
        with self._lock:
            if not refresh and self._jwks and now - self._jwks[0] < self.cfg.cache_ttl_s:
                return self._jwks[1]
        doc = self._get(str(self.discovery()["jwks_uri"]), "key set (JWKS)")
        self.jwks_fetches += 1
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise OidcError("bad_jwks", "The identity provider's key set has no keys.", 502)
        public = [k for k in keys if isinstance(k, dict) and k.get("use") in (None, "sig")
                  and not any(p in k for p in ("d", "k"))]  # signing keys only; never a secret or private key
        try:
            keyset = KeySet.import_key_set({"keys": public})
        except (JoseError, ValueError, TypeError):
            raise OidcError("bad_jwks", "The identity provider's key set cannot be read.", 502) from None
        with self._lock:
            self._jwks = (now, keyset)
        return keyset

    # - the flow -----------------------------------------------------------------------------------
    def authorization_url(self, pending: Pending) -> str:
        """Where the browser goes to sign in: response_type=code with state, nonce and the S256 challenge."""
        endpoint = str(self.discovery()["authorization_endpoint"])
        challenge = code_challenge(pending.verifier)
        query = urlencode({
            "response_type": "code", "client_id": self.cfg.client_id, "redirect_uri": pending.redirect_uri,
            "scope": self.cfg.scopes, "state": pending.state, "nonce": pending.nonce,
            "code_challenge": challenge, "code_challenge_method": "S256"})
        return endpoint + ("&" if "?" in endpoint else "?") + query

    def exchange(self, code: str, pending: Pending) -> str:
        """Trade the code (with the PKCE verifier and the client's credentials) for tokens; the ID token."""
        endpoint = str(self.discovery()["token_endpoint"])
        self._check_url(endpoint, "token endpoint")
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "code_verifier": pending.verifier}
        headers = {"accept": "application/json"}
        secret = self.cfg.client_secret
        if secret and self.cfg.token_auth == "client_secret_basic":
            # RFC 6749 2.3.1: id and secret are form-urlencoded before the Basic encoding
            raw = f"{quote_plus(self.cfg.client_id, safe='')}:{quote_plus(secret, safe='')}".encode()
            headers["authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        else:
            data["client_id"] = self.cfg.client_id
            if secret:
                data["client_secret"] = secret
        try:
            with self._client() as c:
                r = c.post(endpoint, data=data, headers=headers)
        except httpx.HTTPError as exc:
            why = netpolicy.refusal_of(exc) or type(exc).__name__
            raise OidcError("unreachable", f"The identity provider's token endpoint could not be reached ({why}).", 502) from None
        doc = self._json(r, "token response")
        if r.status_code != 200:
            err = doc.get("error")
            shown = err if isinstance(err, str) and err.replace("_", "").isalpha() and len(err) < 40 else "error"
            raise OidcError("token_refused", f"The identity provider refused the sign-in code ({shown}).", 401)
        id_token = doc.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OidcError("no_id_token", "The identity provider's token response has no ID token (is 'openid' in scope?).", 502)
        return id_token

    def _key_for(self, keys: KeySet, kid: str | None, alg: str) -> Key | None:
        kty = _KEY_TYPES.get(alg[:2])
        candidates = [k for k in keys if k.key_type == kty and (kid is None or k.kid == kid)
                      and k.get("alg") in (None, alg)]
        if kid is None and len(candidates) != 1:
            return None
        return candidates[0] if candidates else None

    def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims once every check in the module's docstring passed; else :class:`OidcError`."""
        try:
            header = jws.extract_compact(id_token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError):
            raise OidcError("bad_id_token", "The identity provider's ID token cannot be read.") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise OidcError("bad_alg", f"The ID token is signed with {str(alg)[:20]!r}, which careloop does not accept.")
        if kid is not None and not isinstance(kid, str):
            raise OidcError("bad_id_token", "The ID token's key id is not a string.")
        key = self._key_for(self.jwks(), kid, alg)
        if key is None:  # the issuer may have rotated its keys: read them again, once
            key = self._key_for(self.jwks(refresh=True), kid, alg)
        if key is None:
            raise OidcError("unknown_key", "The ID token is signed with a key the identity provider does not publish.")
        try:
            token = jwt.decode(id_token, key, algorithms=[alg])
        except BadSignatureError:
            raise OidcError("bad_signature", "The ID token's signature does not verify.") from None
        except (JoseError, ValueError):
            raise OidcError("bad_id_token", "The identity provider's ID token cannot be read.") from None
        claims = dict(token.claims)
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()), leeway=self.cfg.leeway_s,
            iss={"essential": True, "value": self.cfg.issuer}, aud={"essential": True, "value": self.cfg.client_id},
            sub={"essential": True}, exp={"essential": True}, iat={"essential": True})
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise OidcError("expired", "The ID token has expired; sign in again (and check this server's clock).") from None
        except (InvalidClaimError, MissingClaimError) as exc:
            claim = getattr(exc, "claim", "")
            raise OidcError(f"bad_{claim}"[:40], f"The ID token's '{claim}' claim is wrong or missing; sign-in is refused.") from None
        except ClaimError:
            raise OidcError("bad_claims", "The ID token's claims are not acceptable.") from None
        aud = claims.get("aud")
        azp = claims.get("azp")
        if (isinstance(aud, list) and len(aud) > 1) or azp is not None:
            if azp != self.cfg.client_id:
                raise OidcError("bad_azp", "The ID token was issued to another client (azp); sign-in is refused.")
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise OidcError("bad_nonce", "The ID token does not belong to this sign-in (nonce); start again.")
        return claims
