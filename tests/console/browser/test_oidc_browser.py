"""OIDC sign-in in a real Chromium: careloop's sign-in page -> oidc-provider-mock's authorization page
(a real provider on loopback) -> the callback -> signed in on the overview with the mapped role."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.console import write_users
from tests.support.oidc import mock_provider
from tests.support.server import InProcess, start_in_process

from .conftest import shot

USERS = {
    "u-olga": {"preferred_username": "olga", "roles": ["care-ops"]},
    "u-nina": {"preferred_username": "nina", "roles": ["unrelated-group"]},
}


@pytest.fixture
def oidc_server(db_url: str, mappings_dir: Path, tmp_path: Path) -> Iterator[InProcess]:
    with mock_provider(USERS) as issuer:
        srv = start_in_process(db_url, mappings_dir, console_users_file=write_users(tmp_path / "users.yaml"),
                               console_oidc_issuer=issuer, console_oidc_client_id="careloop-console",
                               console_oidc_client_secret="s3cret-for-tests", console_oidc_display_name="Care IdP",
                               console_oidc_role_map="care-ops:operator,care-audit:auditor")
        try:
            yield srv
        finally:
            srv.stop()


def _through_the_provider(chromium: Any, srv: InProcess, sub: str) -> Any:
    ctx = chromium.new_context(base_url=srv.http_url, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto("/signin")
    link = page.get_by_role("link", name="Sign in with Care IdP")
    assert link.is_visible()
    shot(page, "signin-oidc")
    link.click()
    page.get_by_placeholder("sub").fill(sub)  # the provider's own sign-in page
    page.get_by_role("button", name="Authorize", exact=True).click()
    return page


def test_oidc_sign_in_ends_on_the_overview(chromium: Any, oidc_server: InProcess) -> None:
    page = _through_the_provider(chromium, oidc_server, "u-olga")
    page.wait_for_url(oidc_server.http_url + "/")
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Messages").is_visible()  # operator, mapped from care-ops
    assert nav.get_by_role("link", name="Privacy").count() == 0
    assert "olga" in page.content()
    shot(page, "overview-oidc-operator")
    # nothing readable by scripts: both cookies are HttpOnly; no tokens in the browser's storage
    stored = page.evaluate("() => [Object.keys(localStorage), document.cookie]")
    assert stored == [[], ""]
    page.context.close()


def test_oidc_user_without_a_role_sees_why(chromium: Any, oidc_server: InProcess) -> None:
    page = _through_the_provider(chromium, oidc_server, "u-nina")
    page.wait_for_url(oidc_server.http_url + "/signin/oidc/callback*")
    assert page.get_by_role("alert").inner_text().startswith("nina is signed in at the identity provider but holds no careloop role")
    shot(page, "signin-oidc-refused")
    page.goto("/")
    assert page.url.endswith("/signin")
    page.context.close()
