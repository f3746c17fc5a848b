"""Console sessions: a random token in an ``HttpOnly; Secure; SameSite=Strict`` cookie; the server
keeps only its SHA-256, the user, roles, CSRF token, and the sign-in and last-seen times. A session
idle longer than ``console_idle_timeout_s`` or older than ``console_session_max_s`` is over.

This first version keeps sessions in the process (a restart signs everyone out).
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, replace

from fastapi import Request
from fastapi.responses import Response

from .access import SESSION_COOKIE, Viewer, permissions_of


@dataclass(frozen=True)
class Session:
    viewer: Viewer
    created: float
    last_seen: float


_LOCK = threading.Lock()
_SESSIONS: dict[str, Session] = {}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(request: Request, response: Response, name: str, roles: tuple[str, ...],
                 extra_permissions: tuple[str, ...] = (), method: str = "password") -> Viewer:
    """Start a session for ``name`` and set its cookie on ``response``."""
    token = secrets.token_urlsafe(32)
    sid = _digest(token)
    viewer = Viewer(name=name, roles=roles, permissions=permissions_of(roles, extra_permissions),
                    csrf=secrets.token_urlsafe(32), session_id=sid[:16], method=method)
    now = time.time()
    with _LOCK:
        _SESSIONS[sid] = Session(viewer, now, now)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, secure=True, samesite="strict", path="/")
    request.state.viewer = viewer
    return viewer


def lookup(request: Request, token: str) -> Viewer | None:
    s = request.app.state.runtime.settings
    sid = _digest(token)
    now = time.time()
    with _LOCK:
        found = _SESSIONS.get(sid)
        if found is None:
            return None
        if now - found.last_seen > s.console_idle_timeout_s or now - found.created > s.console_session_max_s:
            del _SESSIONS[sid]
            return None
        _SESSIONS[sid] = replace(found, last_seen=now)
    return found.viewer


def close_session(request: Request, response: Response) -> None:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with _LOCK:
            _SESSIONS.pop(_digest(token), None)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=True, samesite="strict")
