"""Console sessions, kept server-side in the database (table ``console_session``) so that every
replica shares them and a restart signs nobody out.

The browser holds a random token (32 bytes) in an ``HttpOnly; Secure; SameSite=Strict`` cookie;
the database holds only its SHA-256 (a copy of the table opens no session), the user, their
roles and extra permissions, the sign-in method, the session's CSRF token, and the sign-in,
last-seen and absolute end times.

- **Idle sign-out**: a session unused for ``console_idle_timeout_s`` is over. ``last_seen`` is
  written at most once a minute (or a tenth of the idle timeout when that is shorter), so a
  busy page costs a read per request, not a write; the timeout is accurate to that interval.
- **Absolute end**: ``console_session_max_s`` after sign-in, whatever the activity.
- **Sign-out** deletes the row; changing a user's password or removing the user deletes all of
  theirs (:func:`end_user_sessions`). Expired rows are deleted when looked up and by the
  service's hourly retention loop (:func:`purge_expired`).
"""
from __future__ import annotations

import hashlib
import secrets
import time

import orjson
from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.engine import Engine

from ..storage.queries import console_sessions as q
from ..storage.sql import unit
from .access import SESSION_COOKIE, Viewer, permissions_of

#: ``last_seen`` is written at most this often (seconds).
TOUCH_EVERY_S = 60.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _touch_every(idle_s: float) -> float:
    return min(TOUCH_EVERY_S, idle_s / 10)


def _viewer(row: q.SessionRecord) -> Viewer:
    roles = tuple(str(r) for r in orjson.loads(row.roles))
    extra = tuple(str(p) for p in orjson.loads(row.permissions))
    return Viewer(name=row.user_name, roles=roles, permissions=permissions_of(roles, extra), csrf=row.csrf,
                  session_id=row.token_sha256[:16], method=row.method)


def open_session(request: Request, response: Response, name: str, roles: tuple[str, ...],
                 extra_permissions: tuple[str, ...] = (), method: str = "password") -> Viewer:
    """Start a session for ``name`` (stored in the database) and set its cookie on ``response``."""
    rt = request.app.state.runtime
    token = secrets.token_urlsafe(32)
    now = time.time()
    row = q.SessionRecord(token_sha256=_digest(token), user_name=name[:100], roles=orjson.dumps(list(roles)).decode(),
                          permissions=orjson.dumps(list(extra_permissions)).decode(), method=method[:16],
                          csrf=secrets.token_urlsafe(32), created_at=now, last_seen=now,
                          expires_at=now + rt.settings.console_session_max_s)
    with unit(rt.engine, write=True) as u:
        q.add(u, row)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, secure=True, samesite="strict", path="/")
    viewer = _viewer(row)
    request.state.viewer = viewer
    return viewer


def lookup(request: Request, token: str) -> Viewer | None:
    """The viewer of the session ``token`` opens, or None (unknown, idle too long, or past its end:
    such a row is deleted). Blocking (database): call it from a worker thread in async code."""
    rt = request.app.state.runtime
    s = rt.settings
    sid = _digest(token)
    now = time.time()
    with unit(rt.engine) as u:
        row = q.get(u, sid)
    if row is None:
        return None
    if now - row.last_seen > s.console_idle_timeout_s or now >= row.expires_at:
        with unit(rt.engine, write=True) as u:
            q.delete_one(u, sid)
        return None
    if now - row.last_seen >= _touch_every(s.console_idle_timeout_s):
        with unit(rt.engine, write=True) as u:
            q.touch(u, sid, now, _touch_every(s.console_idle_timeout_s))
    return _viewer(row)


def close_session(request: Request, response: Response) -> None:
    """Sign out: delete this request's session and its cookie."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        with unit(request.app.state.runtime.engine, write=True) as u:
            q.delete_one(u, _digest(token))
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, secure=True, samesite="strict")


def end_user_sessions(engine: Engine, name: str) -> int:
    """End every session of user ``name`` (password changed, user removed); how many ended."""
    with unit(engine, write=True) as u:
        return q.delete_user(u, name)


def purge_expired(engine: Engine, now: float, idle_s: float) -> int:
    """Delete sessions idle longer than ``idle_s`` or past their absolute end; how many."""
    with unit(engine, write=True) as u:
        return q.purge(u, now, idle_s)
