"""Sign-in in a real browser: the cookie works over loopback HTTP, the role's navigation shows, sign-out ends it."""
from __future__ import annotations

from typing import Any, Callable

from tests.support.server import InProcess

from .conftest import shot


def test_operator_signs_in_sees_their_pages_and_signs_out(signed_in: Callable[[str], Any], console_server: InProcess) -> None:
    page = signed_in("otto")
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Messages").is_visible()
    assert nav.get_by_role("link", name="Privacy").count() == 0
    shot(page, "overview-operator")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(console_server.http_url + "/signin")
    page.goto("/")
    assert page.url.endswith("/signin")
    # nothing readable by scripts: the session cookie is HttpOnly; htmx keeps only the current path
    # (URLs carry no PHI) and no page snapshots (historyCacheSize 0)
    stored = page.evaluate("() => [Object.keys(localStorage), Object.keys(sessionStorage), document.cookie]")
    assert stored[0] == [] and set(stored[1]) <= {"htmx-current-path-for-history"} and stored[2] == ""
