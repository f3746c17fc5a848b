"""``/signin/oidc`` and its callback: console sign-in through the configured OpenID Connect issuer
(:mod:`middleware.console.oidc` does the protocol; docs/console-oidc.md the configuration).

The state, nonce and PKCE verifier stay on the server; the browser holds only a random handle in a
``careloop_oidc`` cookie (``HttpOnly; Secure; SameSite=Lax`` — the callback is a cross-site top-level
GET — scoped to ``/signin/oidc``, ten minutes, single-use). Every sign-in, and every refusal with its
reason code, is written to the admin audit (never a token or a code).
"""
from __future__ import annotations

import logging
import secrets
import threading
import weakref

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRouter

from ...delivery.admin_audit import record
from ..oidc import PENDING_TTL_S, OidcConfig, OidcConfigError, OidcError, Pending, PendingStore, Provider, map_roles, user_name
from ..sessions import open_session
from ..web import TEMPLATES, render

router = APIRouter()
log = logging.getLogger("careloop.console.oidc")

HANDLE_COOKIE = "careloop_oidc"
CALLBACK_PATH = "/signin/oidc/callback"
_INIT_LOCK = threading.Lock()


class _State:
    """The app's OIDC relying party: its provider (discovery and JWKS caches) and its pending sign-ins."""

    def __init__(self, cfg: OidcConfig | None, error: str | None) -> None:
        self.cfg = cfg
        self.error = error
        self.provider = Provider(cfg) if cfg else None
        self.pending = PendingStore()


#: One relying party per running careloop (its apps share the caches and the pending sign-ins).
_STATES: "weakref.WeakKeyDictionary[object, _State]" = weakref.WeakKeyDictionary()


def _state(request: Request) -> _State:
    runtime = request.app.state.runtime
    with _INIT_LOCK:
        found = _STATES.get(runtime)
        if found is None:
            try:
                found = _State(OidcConfig.from_settings(runtime.settings), None)
            except OidcConfigError as exc:
                found = _State(None, str(exc))
            _STATES[runtime] = found
    return found


def signin_label(request: Request) -> str | None:
    """The issuer's name for the sign-in page's button, or None when OIDC is not configured."""
    st = _state(request)
    return st.cfg.display_name if st.cfg else None


TEMPLATES.env.globals["oidc_signin_label"] = signin_label


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _refuse(request: Request, code: str, message: str, status: int, actor: str = "oidc") -> HTMLResponse:
    """The sign-in page with ``message``; the refusal (reason code only) in the admin audit."""
    record(request.app.state.runtime.engine, actor=actor, channel="console", action="console.signin", outcome="refused",
           client=_client(request), detail={"method": "oidc", "reason": code})
    response = render(request, "signin.html", {"error": message}, status=status)
    response.delete_cookie(HANDLE_COOKIE, path="/signin/oidc", httponly=True, secure=True, samesite="lax")
    return response


@router.get("/signin/oidc")
def oidc_start(request: Request) -> Response:
    """Send the browser to the issuer's authorization endpoint (code flow, PKCE S256, state, nonce)."""
    st = _state(request)
    if st.provider is None:
        if st.error:
            log.warning("console OIDC sign-in is misconfigured: %s", st.error, extra={"action": "console.oidc"})
            return _refuse(request, "misconfigured", "Sign-in through the identity provider is misconfigured; "
                           "see the server log.", 503)
        return render(request, "signin.html", {"error": "Sign-in through an identity provider is not configured."}, status=404)
    cfg = st.provider.cfg
    redirect_uri = cfg.redirect_url or str(request.base_url).rstrip("/") + CALLBACK_PATH
    verifier = secrets.token_urlsafe(48)
    pending = Pending(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32), verifier=verifier,
                      redirect_uri=redirect_uri)
    try:
        url = st.provider.authorization_url(pending)
    except OidcError as exc:
        return _refuse(request, exc.code, exc.message, exc.status)
    except Exception as exc:  # a page, not a traceback
        log.warning("console OIDC discovery failed unexpectedly: %s", type(exc).__name__, extra={"action": "console.oidc"})
        return _refuse(request, "internal", "Sign-in through the identity provider failed; see the server log.", 500)
    handle = st.pending.put(pending)
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(HANDLE_COOKIE, handle, max_age=int(PENDING_TTL_S), path="/signin/oidc", httponly=True,
                        secure=True, samesite="lax")
    return response


@router.get(CALLBACK_PATH)
def oidc_callback(request: Request, code: str | None = None, state: str | None = None, error: str | None = None) -> Response:
    """Check the state, exchange the code, verify the ID token, map the roles, open the session."""
    st = _state(request)
    if st.provider is None:
        return render(request, "signin.html", {"error": "Sign-in through an identity provider is not configured."}, status=404)
    handle = request.cookies.get(HANDLE_COOKIE)
    pending = st.pending.take(handle) if handle else None
    if pending is None:
        return _refuse(request, "no_pending_signin", "This sign-in has expired or was already used; start again.", 400)
    if not state or not secrets.compare_digest(state.encode(), pending.state.encode()):
        return _refuse(request, "state_mismatch", "This answer does not belong to your sign-in (state); start again.", 400)
    if error or not code:
        shown = error if error and error.replace("_", "").isalpha() and len(error) < 40 else "no code"
        return _refuse(request, "provider_error", f"The identity provider did not sign you in ({shown}).", 401)
    try:
        id_token = st.provider.exchange(code[:4096], pending)
        claims = st.provider.verify_id_token(id_token, pending.nonce)
        name = user_name(st.provider.cfg, claims)
    except OidcError as exc:
        return _refuse(request, exc.code, exc.message, exc.status)
    except Exception as exc:  # a page, not a traceback; the log gets the type only (never a token)
        log.warning("console OIDC sign-in failed unexpectedly: %s", type(exc).__name__, extra={"action": "console.oidc"})
        return _refuse(request, "internal", "Sign-in through the identity provider failed; see the server log.", 500)
    roles = map_roles(st.provider.cfg, claims)
    if not roles:
        return _refuse(request, "no_role", f"{name} is signed in at the identity provider but holds no careloop role "
                       "(analyst, operator, auditor or admin); ask an administrator to grant one.", 403, actor=name)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(HANDLE_COOKIE, path="/signin/oidc", httponly=True, secure=True, samesite="lax")
    viewer = open_session(request, response, name, roles, (), method="oidc")
    record(request.app.state.runtime.engine, actor=name, role=viewer.role_label, channel="console", action="console.signin",
           client=_client(request), detail={"method": "oidc", "session": viewer.session_id})
    return response
