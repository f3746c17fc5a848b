"""``/signin`` (the only page open without a session) and ``/signout``; both written to the admin audit."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ...delivery.admin_audit import record
from .. import access as a
from ..sessions import close_session, open_session
from ..users import UsersFileError, load, verify
from ..web import render

router = APIRouter()


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.get("/signin")
def signin_page(request: Request) -> Response:
    return render(request, "signin.html", {"error": None})


@router.post("/signin")
def signin(request: Request, username: str = Form(..., max_length=100), password: str = Form(..., max_length=1000)) -> Response:
    rt = request.app.state.runtime
    try:
        users = load(rt.settings.console_users_file)
    except UsersFileError as exc:
        return render(request, "signin.html", {"error": f"The users file cannot be read: {exc}"}, status=503)
    user = verify(users, username, password)
    if user is None:
        record(rt.engine, actor=username[:100], channel="console", action="console.signin", outcome="refused",
               client=_client(request))
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
