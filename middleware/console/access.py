"""Who may see and do what in the console: roles, permissions, and the guard every page uses.

Roles (issue 15): **analyst** (rules, playground, journeys, pseudonymous timelines), **operator**
(messages, deliveries, replay, pause), **auditor** (privacy pages, audit export, reveal with a
reason), **admin** (everything). A user may be granted extra permissions by name in the users file
or by the OIDC role mapping, e.g. ``export.lds`` (a HIPAA limited-data-set outcome export, with the
data use agreement recorded), which no role but admin carries by default.

``need(*permissions)`` is a FastAPI dependency (``viewer: Annotated[Viewer, need(PERM)]``): no
session -> the sign-in page (303); a permission missing -> 403 page naming the role that has it;
an unsafe method -> the CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) must match the
session's, and ``Origin`` / ``Sec-Fetch-Site``, when sent, must be this site.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response

from ..config.roles import (  # re-exported: pages write a.MESSAGES
    OVERVIEW, RULES, PLAYGROUND, JOURNEYS, TIMELINE, MESSAGES, MESSAGES_REPLAY, DELIVERIES, DELIVERIES_ACT, PRIVACY,
    PRIVACY_ACT, AUDIT, REVEAL, EXPORT_LDS, USERS, ALL_PERMISSIONS, ROLES, permissions_of, roles_with,
)

__all__ = [
    "OVERVIEW", "RULES", "PLAYGROUND", "JOURNEYS", "TIMELINE", "MESSAGES", "MESSAGES_REPLAY", "DELIVERIES", "DELIVERIES_ACT",
    "PRIVACY", "PRIVACY_ACT", "AUDIT", "REVEAL", "EXPORT_LDS", "USERS", "ALL_PERMISSIONS", "ROLES", "permissions_of",
    "roles_with", "Viewer", "need", "current_viewer", "install_handlers", "SESSION_COOKIE", "CSRF_HEADER",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "careloop_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Viewer:
    """A signed-in console user, as the pages see them."""

    name: str
    roles: tuple[str, ...]
    permissions: frozenset[str]
    csrf: str
    session_id: str
    method: str = "password"  # password | oidc
    extra: dict[str, Any] = field(default_factory=dict)

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def role_label(self) -> str:
        return ", ".join(self.roles) or "no role"


class SignInRequired(Exception):
    """No valid session: answered with a redirect to the sign-in page."""


class Forbidden(Exception):
    def __init__(self, viewer: Viewer, permission: str) -> None:
        super().__init__(permission)
        self.viewer = viewer
        self.permission = permission


class CsrfRefused(Exception):
    """An action without this session's CSRF token, or from another origin."""


def current_viewer(request: Request) -> Viewer | None:
    from .sessions import lookup

    cached = getattr(request.state, "viewer", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    token = request.cookies.get(SESSION_COOKIE)
    viewer = lookup(request, token) if token else None
    request.state.viewer = viewer
    return viewer


async def check_csrf(request: Request, viewer: Viewer) -> None:
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise CsrfRefused()
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            raise CsrfRefused()
    elif origin == "null":
        raise CsrfRefused()
    given = request.headers.get(CSRF_HEADER, "")
    if not given:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get("csrf")
            given = value if isinstance(value, str) else ""
    if not given or not hmac.compare_digest(given.encode(), viewer.csrf.encode()):
        raise CsrfRefused()


def need(*permissions: str) -> Any:
    """A dependency: the signed-in viewer holding every one of ``permissions`` (CSRF-checked on actions)."""

    async def guard(request: Request) -> Viewer:
        viewer = await run_in_threadpool(current_viewer, request)  # a database read (and at most a write a minute)
        if viewer is None:
            raise SignInRequired()
        for p in permissions:
            if not viewer.can(p):
                raise Forbidden(viewer, p)
        if request.method not in SAFE_METHODS:
            await check_csrf(request, viewer)
        return viewer

    return Depends(guard)


def install_handlers(app: FastAPI) -> None:
    from .web import render

    @app.exception_handler(SignInRequired)
    async def _signin(request: Request, exc: SignInRequired) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": "/signin"})
        return RedirectResponse("/signin", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return render(request, "forbidden.html", {"permission": exc.permission, "roles": roles_with(exc.permission)},
                      status=403)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return render(request, "forbidden.html", {"csrf_refused": True}, status=403)
