"""The rules playground in a real browser: the analyst pastes an SIU message and reads the explain
trace, the timeline and the webhook body (identifiers masked); runs the golden tests; an operator is
refused."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import REPO
from tests.support.server import InProcess

from .conftest import shot

SIU = (REPO / "tests/fixtures/hl7/siu_s12_v251.hl7").read_bytes().decode()
IDENTIFIERS = ("TESTPATIENT", "MRN000123", "123-45-6789", "5550101", "19800215")


@pytest.fixture
def mappings_dir(mappings_dir: Path) -> Path:
    """The bundled mappings, with the repository's tests/ beside them (the golden cases read ../../tests/fixtures)."""
    (mappings_dir.parent / "tests").symlink_to(REPO / "tests")
    return mappings_dir


def test_analyst_pastes_an_siu_and_sees_the_trace_and_a_destination_body(signed_in: Callable[[str], Any],
                                                                       console_server: InProcess) -> None:
    page = signed_in("ana")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").click()
    page.wait_for_url("**/playground")
    version = console_server.runtime.ruleset().version
    assert page.get_by_test_id("ruleset-version").inner_text() == version
    page.get_by_label("HL7 v2 message (or batch), or a FHIR resource or Bundle (JSON)").fill(SIU.replace("\r", "\n"))
    page.locator("#pg-at").fill("2024-03-01T09:00")
    page.get_by_label("Fire what is due within").select_option("30")
    page.get_by_role("button", name="Explain").click()
    trace = page.get_by_test_id("explain")
    trace.wait_for()
    text = trace.inner_text()
    assert "[FIRES] appointment-reminder-72h" in text and "appointment.booked" in text
    assert "[false] serviceType.memberOf('colonoscopy')" in text
    body = page.locator('li.decision.pending [data-destination="webhook"] pre.body').first
    assert '"rule_id": "appointment-reminder-72h"' in body.inner_text() and '"contact_key": "ck_' in body.inner_text()
    assert page.get_by_test_id("timeline").get_by_role("cell", name="fired").count() >= 1
    content = page.content()
    for ident in IDENTIFIERS:
        assert ident not in content, ident
    assert page.url.endswith("/playground")  # the input never reaches a URL
    shot(page, "playground-analyst")
    page.set_viewport_size({"width": 800, "height": 900})
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.get_by_role("button", name="Run the golden tests").click()
    summary = page.get_by_test_id("golden-summary")
    summary.wait_for(timeout=120_000)
    assert " passed, 0 failed" in summary.inner_text()
    stored = page.evaluate("() => [Object.keys(localStorage), JSON.stringify(sessionStorage)]")
    assert stored[0] == [] and "MSH" not in stored[1]


def test_an_operator_is_refused_the_playground(signed_in: Callable[[str], Any]) -> None:
    page = signed_in("otto")
    assert page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").count() == 0
    response = page.goto("/playground")
    assert response is not None and response.status == 403
    shot(page, "playground-operator-refused")
