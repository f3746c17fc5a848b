"""``/signin`` (the only page open without a session) and ``/signout``; both written to the admin audit.

Password guessing is throttled per client address with the API's own
:class:`~middleware.api.authn.FailureThrottle` (``auth_fail_limit`` failures within
``auth_fail_window_s``; the same counter as bearer tokens, so an address cannot alternate between
the two): a throttled address is answered 429 with ``Retry-After`` and its password is not checked
(logged; the audit row of the failure that started the throttling says so).
Every answer to a sign-in takes at least :data:`ANSWER_FLOOR_S` and the same argon2 work whether
or not the user exists, so neither the time nor the message tells a wrong name from a wrong password.
"""
from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ...api.authn import client_address, throttle_for
from ...delivery.admin_audit import record
from .. import access as a
from ..sessions import close_session, open_session
from ..users import UsersFileError, load, verify
from ..web import render

router = APIRouter()
log = logging.getLogger("careloop.console")

#: The least time a sign-in answer takes (seconds): hides what differs between outcomes (file read, audit write).
ANSWER_FLOOR_S = 0.25


def _client(request: Request) -> str | None:
    return client_address(request) or None


def _after_floor(started: float) -> None:
    rest = ANSWER_FLOOR_S - (time.monotonic() - started)
    if rest > 0:
        time.sleep(rest)


@router.get("/signin")
def signin_page(request: Request) -> Response:
    return render(request, "signin.html", {"error": None})


@router.post("/signin")
def signin(request: Request, username: str = Form(..., max_length=100), password: str = Form(..., max_length=1000)) -> Response:
    started = time.monotonic()
    try:
        return _signin(request, username, password)
    finally:
        _after_floor(started)


def _signin(request: Request, username: str, password: str) -> Response:
    rt = request.app.state.runtime
    throttle = throttle_for(request)
    client = client_address(request)
    wait = throttle.retry_after(client, time.monotonic())
    if wait is not None:
        # not an audit row per attempt (a flood would fill the append-only audit): the row that started it says so
        log.warning("console sign-in throttled", extra={"action": "console.signin_throttled", "client": client})
        refused = render(request, "signin.html", {"error": "Too many failed sign-ins from this address; try again later."},
                         status=429)
        refused.headers["Retry-After"] = str(wait)
        return refused
    try:
        users = load(rt.settings.console_users_file)
    except UsersFileError as exc:
        return render(request, "signin.html", {"error": f"The users file cannot be read: {exc}"}, status=503)
    user = verify(users, username, password)
    if user is None:
        started_throttling = throttle.fail(client, time.monotonic())
        log.warning("console sign-in failed", extra={"action": "console.signin_failed", "client": client})
        record(rt.engine, actor=username[:100], channel="console", action="console.signin", outcome="refused",
               client=_client(request), detail={"throttle_started": True} if started_throttling else None)
        return render(request, "signin.html", {"error": "Wrong user name or password."}, status=401)
    response = RedirectResponse("/", status_code=303)
    viewer = open_session(request, response, user.name, user.roles, user.permissions)
    record(rt.engine, actor=user.name, role=viewer.role_label, channel="console", action="console.signin",
           client=_client(request), detail={"session": viewer.session_id})
    return response


@router.post("/signout")
def signout(request: Request, viewer: Annotated[a.Viewer, a.need()]) -> Response:
    response = RedirectResponse("/signin", status_code=303)
    close_session(request, response)
    record(request.app.state.runtime.engine, actor=viewer.name, role=viewer.role_label, channel="console",
           action="console.signout", client=_client(request), detail={"session": viewer.session_id})
    return response
