"""OpenID providers on loopback for the console's OIDC tests, both real HTTP servers:

* :func:`mock_provider` runs ``oidc-provider-mock`` (PyPI; authlib's authorization server in Flask)
  under werkzeug on a free port in a thread: discovery, authorization form, token endpoint, JWKS.
* :class:`ScriptedProvider` is a small provider of our own (``http.server``) whose keys and ID token
  claims a test sets: key rotation, a wrong audience, an expired token, another nonce, another issuer
  in discovery, ``alg: none``. Its token endpoint checks the PKCE verifier against the challenge.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import Key, RSAKey


@contextmanager
def mock_provider(users: dict[str, dict[str, Any]] | None = None) -> Iterator[str]:
    """``oidc-provider-mock`` serving on 127.0.0.1:<free port>; yields its issuer URL. ``users`` are
    sub -> claims (``preferred_username``, ``roles``...), put into its ID tokens."""
    import werkzeug.serving
    from oidc_provider_mock import User, app

    server = werkzeug.serving.make_server(
        "127.0.0.1", 0, app(user_claims=[User(sub=s, claims=c) for s, c in (users or {}).items()], require_nonce=True),
        threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def authorize_at_mock(authorize_url: str, sub: str) -> str:
    """Submit the mock's authorization form as ``sub`` (what a person does in the browser); return the
    callback URL the provider redirects to (with ``code`` and ``state``)."""
    r = httpx.post(authorize_url, data={"sub": sub}, timeout=10, follow_redirects=False)
    assert r.status_code == 302, (r.status_code, r.text[:500])
    return str(r.headers["location"])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class ScriptedProvider:
    """Our own provider on loopback. ``keys`` are the published signing keys; ``signing_key`` signs;
    ``claims`` (a function of the authorization request's parameters) gives the ID token's claims."""

    client_id: str = "careloop-console"
    keys: list[Key] = field(default_factory=list)
    signing_key: Key | None = None
    alg: str = "RS256"
    claims: Callable[["ScriptedProvider", dict[str, str]], dict[str, Any]] | None = None
    hmac_secret: bytes = b""
    discovery_issuer: str | None = None
    token_endpoint: str | None = None
    issuer: str = ""
    jwks_requests: int = 0
    discovery_requests: int = 0
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    _codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def new_key(self) -> Key:
        key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})
        return key

    def default_claims(self, params: dict[str, str], **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.issuer, "aud": self.client_id, "sub": "u-1", "iat": now, "exp": now + 300,
                "nonce": params.get("nonce"), "preferred_username": "sam", "roles": ["care-ops"]}
        base.update(extra)
        return base

    def id_token(self, claims: dict[str, Any]) -> str:
        if self.alg.startswith("HS"):  # keyed with hmac_secret (e.g. the public key's PEM: the classic confusion)
            header = _b64(json.dumps({"alg": self.alg, "kid": self.keys[0].kid, "typ": "JWT"}).encode())
            body = _b64(json.dumps(claims).encode())
            mac = hmac.new(self.hmac_secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
            return f"{header}.{body}.{_b64(mac)}"
        if self.alg == "none":
            header = {"alg": "none", "typ": "JWT"}
            return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."
        assert self.signing_key is not None
        return jwt.encode({"alg": self.alg, "kid": self.signing_key.kid}, claims, self.signing_key)

    def authorize(self, authorize_url: str) -> str:
        """What the provider's sign-in page would do: remember the request, redirect back with a code."""
        params = {k: v[0] for k, v in parse_qs(urlsplit(authorize_url).query).items()}
        code = secrets.token_urlsafe(16)
        self._codes[code] = params
        return params["redirect_uri"] + "?" + urlencode({"code": code, "state": params["state"]})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _send(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/.well-known/openid-configuration":
                    provider.discovery_requests += 1
                    base = provider.issuer
                    self._send(200, {"issuer": provider.discovery_issuer or base, "authorization_endpoint": base + "/authorize",
                                     "token_endpoint": provider.token_endpoint or base + "/token", "jwks_uri": base + "/jwks",
                                     "id_token_signing_alg_values_supported": ["RS256"],
                                     "code_challenge_methods_supported": ["S256"]})
                elif path == "/jwks":
                    provider.jwks_requests += 1
                    self._send(200, {"keys": [k.as_dict(private=False) for k in provider.keys]})
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                if urlsplit(self.path).path != "/token":
                    self._send(404, {"error": "not_found"})
                    return
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                provider.token_requests.append({"form": form, "authorization": self.headers.get("authorization")})
                params = provider._codes.pop(form.get("code", ""), None)
                if params is None:
                    self._send(400, {"error": "invalid_grant"})
                    return
                verifier = form.get("code_verifier", "")
                if _b64(hashlib.sha256(verifier.encode()).digest()) != params.get("code_challenge"):
                    self._send(400, {"error": "invalid_grant"})
                    return
                claims = (provider.claims or ScriptedProvider.default_claims)(provider, params)
                self._send(200, {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                                 "id_token": provider.id_token(claims)})

        return Handler

    @contextmanager
    def serve(self) -> Iterator["ScriptedProvider"]:
        if not self.keys:
            self.signing_key = self.new_key()
            self.keys = [self.signing_key]
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.issuer = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
