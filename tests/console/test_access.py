"""The console's door: sign-in, roles, CSRF, security headers (TestClient over the real app)."""
from __future__ import annotations

from pathlib import Path

import pytest

from middleware.storage.queries import admin_audit as aq
from middleware.storage.sql import unit
from tests.support.console import client, console_runtime, password_of, sign_in, write_users


@pytest.fixture
def rt(db_url: str, mappings_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return console_runtime(db_url, mappings_dir, write_users(tmp_path / "users.yaml"))


def test_anonymous_sees_only_signin_and_healthz(rt) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    assert c.get("/healthz").status_code == 200
    assert c.get("/signin").status_code == 200
    r = c.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/signin"


def test_signin_sets_a_hardened_cookie_and_audits(rt) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    r = c.post("/signin", data={"username": "otto", "password": password_of("otto")})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "secure" in cookie and "samesite=strict" in cookie
    assert c.get("/").status_code == 200
    with unit(rt.engine) as u:
        rows = aq.page(u, limit=10, action="console.signin", actor="otto", since=None, before_id=None)
    assert [(x.actor, x.channel, x.outcome) for x in rows] == [("otto", "console", "ok")]


def test_wrong_password_is_refused(rt) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    r = c.post("/signin", data={"username": "otto", "password": "nope"})
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert c.get("/").status_code == 303


def test_security_headers(rt) -> None:  # type: ignore[no-untyped-def]
    r = client(rt).get("/signin")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_signout_needs_csrf(rt) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    csrf = sign_in(c, "ana")
    assert c.post("/signout", data={"csrf": "forged"}).status_code == 403
    assert c.post("/signout", data={"csrf": csrf}, headers={"origin": "https://evil.example"}).status_code == 403
    assert c.get("/").status_code == 200
    assert c.post("/signout", data={"csrf": csrf}).status_code == 303
    assert c.get("/").status_code == 303
