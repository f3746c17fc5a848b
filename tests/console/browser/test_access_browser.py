"""Access in a real Chromium: each role signs in and sees its navigation; each role is refused
(403 page naming the roles that may) on every navigation path outside its role; idle sign-out;
an action without the CSRF token refused; the console over TLS with its Secure cookie.

Pages still being written elsewhere are stood in for, at their own path and behind the same
guard, by a test-only page (``_stand_ins``); where the real page exists it answers instead."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from middleware.config.roles import ROLES
from middleware.console import access as a
from middleware.console.web import NAV
from middleware.service import Runtime
from tests.integration.tlscerts import issue, make_ca
from tests.support.console import ROLE_USERS, password_of, write_users
from tests.support.server import InProcess, start_in_process

from .conftest import shot


def _stand_ins(app: Any) -> None:
    """A guarded page at every navigation path that no router serves yet (a real page wins: it was mounted first)."""
    served = {getattr(r, "path", None) for r in app.routes}
    router = APIRouter()
    for item in NAV:
        if item.path not in served:
            router.add_api_route(item.path, _stand_in(item.label, item.permission), methods=["GET"])
    app.include_router(router)


def _stand_in(label: str, permission: str) -> Callable[..., Response]:
    guard = a.need(permission)

    def page(request: Request, viewer: a.Viewer = guard) -> Response:
        return HTMLResponse(f"<!doctype html><title>{label}</title><h1>{label} (stand-in)</h1>")

    return page


@pytest.fixture
def console_server(db_url: str, mappings_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcess]:
    original = Runtime.http_app

    def http_app(self: Runtime) -> Any:
        app = original(self)
        _stand_ins(app)
        return app

    monkeypatch.setattr(Runtime, "http_app", http_app)
    srv = start_in_process(db_url, mappings_dir, console_users_file=write_users(tmp_path / "users.yaml"))
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", list(ROLE_USERS))
def test_each_role_signs_in_sees_its_pages_and_is_refused_the_others(signed_in: Callable[[str], Any], name: str) -> None:
    role = ROLE_USERS[name]
    page = signed_in(name)
    allowed = [n for n in NAV if n.permission in ROLES[role]]
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link").all_inner_texts() == [n.label for n in allowed]
    assert page.locator(".who").inner_text().startswith(f"{name} ({role})")
    shot(page, f"access-signed-in-{role}")
    refused = [n for n in NAV if n not in allowed]
    assert (refused == []) == (role == "admin")
    for item in NAV:
        response = page.goto(item.path)
        assert response is not None
        if item in allowed:
            assert response.status == 200, (role, item.path)
            continue
        assert response.status == 403, (role, item.path)
        alert = page.get_by_role("alert")
        assert f"Your role ({role}) does not include {item.permission}" in alert.inner_text()
        assert ", ".join(r for r, perms in ROLES.items() if item.permission in perms) in alert.inner_text()
    if refused:
        page.goto(refused[0].path)
        shot(page, f"access-refused-{role}")


def test_signin_page_refuses_a_wrong_password(chromium: Any, console_server: InProcess) -> None:
    ctx = chromium.new_context(base_url=console_server.http_url, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto("/")
    assert page.url.endswith("/signin")  # anonymous: the sign-in page only
    page.get_by_label("User name").fill("otto")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong user name or password."
    assert ctx.cookies() == []
    shot(page, "access-signin-refused")
    ctx.close()


def test_an_action_without_the_csrf_token_is_refused(signed_in: Callable[[str], Any], console_server: InProcess) -> None:
    page = signed_in("aud")
    # a script on the page posting without the header or field
    status = page.evaluate("() => fetch('/signout', {method: 'POST'}).then(r => r.status)")
    assert status == 403
    # a form without the hidden field (as a forged form would be)
    page.evaluate("""() => { const f = document.createElement('form'); f.method = 'post'; f.action = '/signout';
                            document.body.appendChild(f); f.submit(); }""")
    page.wait_for_load_state()
    assert "did not carry this session's form token" in page.get_by_role("alert").inner_text()
    shot(page, "access-csrf-refused")
    page.goto("/")
    assert page.url == console_server.http_url + "/"  # still signed in: nothing happened
    page.get_by_role("button", name="Sign out").click()  # the real form carries the token
    page.wait_for_url(console_server.http_url + "/signin")


def _sign_in(page: Any, name: str) -> None:
    page.goto("/signin")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password_of(name))
    page.get_by_role("button", name="Sign in").click()


def test_idle_session_is_signed_out(chromium: Any, db_url: str, mappings_dir: Path, tmp_path: Path) -> None:
    srv = start_in_process(db_url, mappings_dir, console_users_file=write_users(tmp_path / "users.yaml"),
                           console_idle_timeout_s=2.0)
    ctx = chromium.new_context(base_url=srv.http_url, viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        _sign_in(page, "otto")
        page.wait_for_url(srv.http_url + "/")
        time.sleep(1.0)
        page.goto("/")
        assert page.url == srv.http_url + "/"  # active: still in
        time.sleep(2.6)
        page.goto("/")
        assert page.url == srv.http_url + "/signin"  # idle past the timeout: signed out
        shot(page, "access-idle-signed-out")
    finally:
        ctx.close()
        srv.stop()


def test_console_over_tls_with_a_secure_cookie(chromium: Any, db_url: str, mappings_dir: Path, tmp_path: Path) -> None:
    ca = make_ca()
    cert, key = issue(ca, "careloop console", server=True).write(tmp_path, "server")
    srv = start_in_process(db_url, mappings_dir, console_users_file=write_users(tmp_path / "users.yaml"),
                           tls_cert_file=cert, tls_key_file=key)
    assert srv.http_url.startswith("https://127.0.0.1:")
    ctx = chromium.new_context(base_url=srv.http_url, ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        _sign_in(page, "root")
        page.wait_for_url(srv.http_url + "/")
        [cookie] = ctx.cookies()
        assert (cookie["name"], cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (a.SESSION_COOKIE, True, True, "Strict")
        response = page.goto("/")
        assert response is not None and response.status == 200
        assert response.headers["strict-transport-security"].startswith("max-age=")
        assert page.get_by_role("navigation", name="Main").get_by_role("link").count() == len(NAV)
        shot(page, "access-tls-admin")
    finally:
        ctx.close()
        srv.stop()
