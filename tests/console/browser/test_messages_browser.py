"""The message browser and the overview in headless Chromium: an operator filters, opens an errored
message (masked, field names on hover), replays it; an admin reveals with a reason and the reveal
is in the admin audit; the overview shows its figures and sparklines."""
from __future__ import annotations

import time
from typing import Any, Callable

from middleware.storage.queries import admin_audit as aq, rollups
from middleware.storage.sql import unit
from tests.console.seed import seed
from tests.support.server import InProcess

from .conftest import shot


def audit(srv: InProcess, action: str) -> list[aq.AdminAuditRecord]:
    with unit(srv.runtime.engine) as u:
        return aq.page(u, limit=20, action=action, actor=None, since=None, before_id=None)


def test_operator_browses_masked_message_and_replays_it(signed_in: Callable[[str], Any], console_server: InProcess) -> None:
    ids = seed(console_server.runtime.engine, n=60)
    page = signed_in("otto")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Messages").click()
    page.wait_for_url("**/messages")
    assert page.locator("table.messages tbody tr").count() == 50
    assert page.get_by_role("link", name="Older →").is_visible()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/messages?*status=failed*")
    rows = page.locator("table.messages tbody tr")
    assert rows.count() == 1 and "normalize: no PV1-19" in rows.first.inner_text()
    shot(page, "messages-operator")
    page.get_by_role("link", name=str(ids["failed"]), exact=True).click()
    page.wait_for_url(f"**/messages/{ids['failed']}")
    text = page.locator("main").inner_text()
    assert "QUINCEWORTH" not in text and "MRN0042" not in text and "***" in text
    name_field = page.locator('abbr[title="PID-5 Patient Name"]')
    assert name_field.inner_text() == "***"
    assert page.locator('abbr[title="MSA-2 Message Control Id"]').inner_text() == "CTRL-FAIL-1"  # the ACK sent
    assert page.get_by_role("button", name="Reveal").count() == 0  # operators cannot reveal
    name_field.hover()
    shot(page, "message-operator")
    page.get_by_role("button", name="Replay").click()
    page.wait_for_url(f"**/messages/{ids['failed']}?replayed=1")
    assert page.get_by_role("status").inner_text() == "Queued for processing again."
    rows_audit = audit(console_server, "message.replay")
    assert [(r.actor, r.channel, r.target_id, r.outcome) for r in rows_audit] == [("otto", "console", str(ids["failed"]), "ok")]


def test_admin_reveal_with_reason_is_audited_and_not_kept(signed_in: Callable[[str], Any], console_server: InProcess) -> None:
    ids = seed(console_server.runtime.engine, n=5)
    page = signed_in("root")
    page.goto(f"/messages/{ids['failed']}")
    assert "QUINCEWORTH" not in page.locator("main").inner_text()
    page.get_by_label("Reason to reveal identifiers").fill("INC-2231 wrong ward on ADT")
    page.get_by_role("button", name="Reveal").click()
    page.wait_for_load_state()
    text = page.locator("main").inner_text()
    assert "QUINCEWORTH^ZELDA" in text and "MRN0042" in text and page.url.endswith(f"/messages/{ids['failed']}/reveal")
    shot(page, "message-reveal-admin")
    rows = audit(console_server, "console.reveal")
    assert [(r.actor, r.role, r.channel, r.target_kind, r.target_id, r.reason) for r in rows] == [
        ("root", "admin", "console", "message", str(ids["failed"]), "INC-2231 wrong ward on ADT")]
    page.goto(f"/messages/{ids['failed']}")  # the reveal lived in that one response
    assert "QUINCEWORTH" not in page.locator("main").inner_text()
    stored = page.evaluate("() => [Object.keys(localStorage), Object.keys(sessionStorage)]")
    assert stored[0] == [] and set(stored[1]) <= {"htmx-current-path-for-history"}


def test_overview_renders_figures_and_sparklines(signed_in: Callable[[str], Any], console_server: InProcess) -> None:
    engine = console_server.runtime.engine
    seed(engine, n=40)  # received in the past: counted in no sparkline of the last day
    from tests.console.seed import row
    from middleware.storage.queries.ingest import INBOX_COLUMNS

    now = time.time()
    with unit(engine, write=True) as u:
        u.many("inbox.insert", [{c: r[c] for c in INBOX_COLUMNS}
                                for r in (row(1000 + i, received_at=now - 60 * (2 + i % 20)) for i in range(25))])
    rollups.fill(engine, now)
    page = signed_in("ana")
    assert page.get_by_role("heading", name="Overview").is_visible()
    spark = page.get_by_role("img", name="hl7v2:epic: 25 messages in the last hour", exact=False)
    assert spark.first.is_visible()
    row_text = page.locator('tr[data-source="hl7v2:epic"]').inner_text()
    assert "25 messages in the last hour" in row_text and "25 messages in the last day" in row_text
    assert page.locator('[data-figure="backlog"]').inner_text().strip().isdigit()
    assert page.locator('tr[data-destination="webhook"]').count() == 1
    shot(page, "overview-analyst")
    page.set_viewport_size({"width": 800, "height": 1000})  # a tablet
    shot(page, "overview-analyst-tablet")
