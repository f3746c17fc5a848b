"""The journeys page in a real browser: journey entries made by SIU messages through the real pipeline
(a goal with a 50% holdout), and the figures the analyst reads equal the operator API's JSON."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from middleware.console.pages.journeys import pct, points
from middleware.rules.load import load_ruleset
from middleware.storage.db import init_db, make_engine
from tests.console.test_journeys import GOAL, N, seed, winback_mappings
from tests.support.console import write_users
from tests.support.server import InProcess, start_in_process

from .conftest import shot


@pytest.fixture
def console_server(db_url: str, mappings_dir: Path, tmp_path: Path) -> Iterator[InProcess]:
    """careloop with the win-back goal's entries already in its database (seeded before it starts)."""
    winback_mappings(mappings_dir)
    rs, diags = load_ruleset(mappings_dir)
    assert rs is not None, [str(d) for d in diags]
    engine = make_engine(db_url)
    init_db(engine)
    seed(engine, rs)
    engine.dispose()
    srv = start_in_process(db_url, mappings_dir, console_users_file=write_users(tmp_path / "users.yaml"))
    yield srv
    srv.stop()


def test_journeys_page_shows_the_apis_outcome_figures(signed_in: Callable[[str], Any], console_server: InProcess) -> None:
    page = signed_in("ana")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Journeys").click()
    page.wait_for_url("**/journeys")
    assert page.get_by_role("heading", name="Journeys", level=1).is_visible()
    assert page.get_by_role("cell", name="noshow-winback").count() >= 1
    shot(page, "journeys-analyst")
    page.get_by_role("link", name=GOAL).first.click()
    page.wait_for_url(f"**/journeys/{GOAL}")
    (item,) = console_server.get(f"/api/reports/outcomes/{GOAL}")["items"]  # the operator API, same moment
    assert item["treated"]["entries"] + item["held_out"]["entries"] == N
    for arm, key, rate_key in (("treated", "treated", "treated_rate"), ("held out", "held_out", "held_out_rate")):
        row = page.locator(f'tr[data-arm="{arm}"]')
        for field in ("entries", "achieved", "missed"):
            assert row.locator(f'td[data-field="{field}"]').inner_text() == str(item[key][field])
        rate = item["itt"][rate_key]
        assert row.locator('td[data-field="rate"]').inner_text() == pct(rate["estimate"])
        assert float(row.locator('td[data-field="rate"]').get_attribute("data-value")) == rate["estimate"]
        assert row.locator('td[data-field="interval"]').inner_text() == f"{pct(rate['low'])} to {pct(rate['high'])}"
    diff = item["itt"]["difference"]
    assert page.locator('tr[data-measure="difference"] td').first.inner_text() == points(diff["estimate"])
    assert item["verdict"] in page.locator("p.verdict").inner_text()
    charts = page.locator("svg.chart")
    assert charts.count() >= 4 and charts.first.is_visible()
    assert page.get_by_role("img", name="Rate reaching the goal per arm", exact=False).is_visible()
    shot(page, "journey-goal-analyst")
    page.set_viewport_size({"width": 800, "height": 900})  # a tablet: nothing wider than the screen
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(page, "journey-goal-analyst-800")
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download CSV").click()
    got = Path(dl.value.path()).read_text()
    assert got.splitlines()[0].startswith("goal,experiment,period,arm") and GOAL in got


def test_an_operator_is_refused_the_journeys(signed_in: Callable[[str], Any]) -> None:
    page = signed_in("otto")
    assert page.get_by_role("navigation", name="Main").get_by_role("link", name="Journeys").count() == 0
    response = page.goto(f"/journeys/{GOAL}")
    assert response is not None and response.status == 403
