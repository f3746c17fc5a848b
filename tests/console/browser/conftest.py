"""Browser fixtures: a real careloop (HTTP on a loopback port, workers running) and Debian's headless
Chromium driven by Playwright (``executable_path=/usr/bin/chromium``; never a browser download).

Skipped with the reason when Chromium or Playwright is absent; a failure under ``CI``.
Screenshots go to ``build/console-screenshots/`` (``shot(page, name)``); docs/console.md shows them.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.console import ROLE_USERS, password_of, write_users
from tests.support.server import InProcess, start_in_process

REPO = Path(__file__).resolve().parents[3]
SHOTS = REPO / "build" / "console-screenshots"
CHROMIUM = os.environ.get("CARELOOP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.browser


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: browser tests must run; .ci/run installs Debian's chromium)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium per test module. Not per session: Playwright's sync API runs an event
    loop in this thread while it is open, and later tests that call asyncio.run() would fail."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (make install)")
    if not CHROMIUM:
        _unavailable("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def console_server(db_url: str, mappings_dir: Path, tmp_path: Path) -> Iterator[InProcess]:
    """careloop serving HTTP (API + console) on a loopback port with one user per role (tests.support.console)."""
    users = write_users(tmp_path / "users.yaml")
    srv = start_in_process(db_url, mappings_dir, console_users_file=users)
    yield srv
    srv.stop()


@pytest.fixture
def signed_in(chromium: Any, console_server: InProcess) -> Iterator[Callable[[str], Any]]:
    """``signed_in("otto")`` -> a Playwright page signed in as that user (one fresh context each)."""
    contexts: list[Any] = []

    def open_as(name: str) -> Any:
        assert name in ROLE_USERS or name, name
        ctx = chromium.new_context(base_url=console_server.http_url, viewport={"width": 1280, "height": 900})
        contexts.append(ctx)
        page = ctx.new_page()
        page.goto("/signin")
        page.get_by_label("User name").fill(name)
        page.get_by_label("Password").fill(password_of(name))
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(console_server.http_url + "/")
        return page

    yield open_as
    for ctx in contexts:
        ctx.close()


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as build/console-screenshots/NAME.png (an artifact of the run)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
