"""Deliveries, privacy and audit pages in a real Chromium against a real careloop (workers running):
a dead letter (made by a loopback receiver answering 400) replayed and delivered, a destination
paused and resumed, a suppression added and revoked, and the audit page showing those actions;
roles refused where they should be. Screenshots: deliveries-operator, delivery-operator,
privacy-auditor, privacy-patient-auditor, audit-auditor."""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from middleware.delivery.sink import SinkServer
from middleware.storage.tables import DeliveryRow, Suppression, TriggerRow
from tests.support.console import write_users
from tests.support.delivery_pipeline import WEBHOOK_SECRET, Pipeline, destination, make_pipeline, write_mappings
from tests.support.server import InProcess, start_in_process, wait_until

from .conftest import shot


@pytest.fixture
def world(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Pipeline, SinkServer]]:
    """Dead letters: every first attempt to the webhook answered 400 by a real loopback receiver."""
    monkeypatch.setenv("HOOK_SECRET", WEBHOOK_SECRET)
    with SinkServer([WEBHOOK_SECRET]) as sink:
        dests = [destination("hook", "webhook", webhook_url=sink.url + "/a"),
                 destination("hook2", "webhook", webhook_url=sink.url + "/b")]
        p = make_pipeline(db_url, write_mappings(tmp_path, dests))
        p.ingest(["siu_s26_v251.hl7"])
        p.fire()
        sink.respond_with(400, times=len(p.rows(DeliveryRow)))
        # Playwright's sync API keeps an event loop running in this thread: the worker runs in another
        th = threading.Thread(target=lambda: p.deliver(p.worker()))
        th.start()
        th.join(60)
        assert {d.status for d in p.rows(DeliveryRow)} == {"dead"}
        yield p, sink


@pytest.fixture
def console_server(world: tuple[Pipeline, SinkServer], tmp_path: Path) -> Iterator[InProcess]:
    """careloop (API, console, workers) on the dead letters' database and destinations."""
    p, _ = world
    srv = start_in_process(p.db_url, p.mappings, console_users_file=write_users(tmp_path / "users.yaml"))
    yield srv
    srv.stop()


def _status(p: Pipeline, delivery_id: int) -> str:
    return {d.id: d.status for d in p.rows(DeliveryRow)}[delivery_id]  # type: ignore[no-any-return]


def test_dead_letter_replayed_and_destination_paused_and_resumed(signed_in: Callable[[str], Any],
                                                               world: tuple[Pipeline, SinkServer]) -> None:
    p, sink = world
    dead = sorted(d.id for d in p.rows(DeliveryRow, DeliveryRow.destination == "hook"))
    page = signed_in("otto")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Deliveries").click()
    page.wait_for_url("**/deliveries")
    assert page.get_by_role("link", name=f"#{dead[0]}").is_visible()
    assert page.locator("td", has_text="HTTP 400").count() >= len(dead)
    shot(page, "deliveries-operator")
    # a tablet: the list with its dead letters fits the width (no sideways scrolling), actions reachable
    page.set_viewport_size({"width": 800, "height": 1000})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 800
    assert page.get_by_role("button", name="Pause hook2").is_visible()
    shot(page, "deliveries-operator-tablet")
    page.set_viewport_size({"width": 1280, "height": 900})
    # inspect one: attempts and the masked body as sent
    page.get_by_role("link", name=f"#{dead[0]}").click()
    page.wait_for_url(f"**/deliveries/{dead[0]}")
    assert page.get_by_role("heading", name=f"Delivery #{dead[0]}").is_visible()
    assert '"contact_key"' in page.locator("#body").inner_text()
    shot(page, "delivery-operator")
    page.get_by_label("Reason").fill("receiver fixed")
    page.get_by_role("button", name=f"Replay delivery #{dead[0]}").click()
    assert "1 delivery put back to pending" in page.locator("#result").inner_text()
    wait_until(lambda: _status(p, dead[0]) == "delivered", 20, what="the replayed dead letter delivered")
    page.goto(f"/deliveries/{dead[0]}")
    assert page.locator(".status-delivered").first.is_visible()
    assert page.locator("table[aria-labelledby=disclosures] tbody tr").first.inner_text().count("delivered") >= 1
    # pause hook2, then resume it
    page.goto("/deliveries")
    row = page.locator('tr[data-destination="hook2"]')
    row.get_by_label("Reason for pausing hook2").fill("vendor maintenance")
    row.get_by_role("button", name="Pause hook2").click()
    assert "hook2 paused" in page.locator("#result").inner_text()
    page.goto("/deliveries")
    row = page.locator('tr[data-destination="hook2"]')
    assert row.locator(".state-paused").inner_text() == "paused"
    shot(page, "deliveries-paused-operator")
    row.get_by_label("Reason for resuming hook2").fill("maintenance over")
    row.get_by_role("button", name="Resume hook2").click()
    assert "hook2 resumed" in page.locator("#result").inner_text()
    page.goto("/deliveries")
    assert page.locator('tr[data-destination="hook2"] .state-healthy').is_visible()
    # a replay of hook2's dead letters by filter: the confirm step gives the count, then they are sent
    page.get_by_label("Destination", exact=True).fill("hook2")
    page.get_by_role("button", name="Filter", exact=True).click()
    page.get_by_role("button", name=re.compile("Replay every dead delivery")).click()
    n2 = len(p.rows(DeliveryRow, DeliveryRow.destination == "hook2"))
    assert page.locator("#replay-count strong").first.inner_text() == str(n2)
    page.get_by_label("Reason").fill("after maintenance")
    page.get_by_role("button", name=f"Replay {n2}").click()
    assert f"{n2} deliver" in page.locator("#result").inner_text()
    wait_until(lambda: {d.status for d in p.rows(DeliveryRow, DeliveryRow.destination == "hook2")} == {"delivered"}, 20,
               what="hook2's replayed deliveries delivered")
    page.goto("/deliveries")
    assert page.locator('tr[data-destination="hook2"] .state-healthy').is_visible()


def test_suppression_added_and_revoked_and_audit_shows_the_actions(signed_in: Callable[[str], Any],
                                                                    world: tuple[Pipeline, SinkServer],
                                                                    console_server: InProcess) -> None:
    p, _ = world
    [t] = p.rows(TriggerRow)[:1]
    otto = signed_in("otto")
    otto.goto("/deliveries")
    otto.locator('tr[data-destination="hook"]').get_by_role("button", name="Pause hook").click()
    otto.goto("/deliveries")
    otto.locator('tr[data-destination="hook"]').get_by_role("button", name="Resume hook").click()
    # the operator may not open privacy or audit
    otto.goto("/privacy")
    assert otto.get_by_role("heading", name="Not allowed").is_visible()
    aud = signed_in("aud")
    aud.get_by_role("navigation", name="Main").get_by_role("link", name="Privacy").click()
    aud.wait_for_url("**/privacy")
    form = aud.locator("form", has=aud.get_by_role("heading", name="Suppression (opt-out)"))
    form.get_by_label("Patient identifier (system|MRN)").fill(t.patient_key)
    form.get_by_label("Source").select_option("sms-stop")
    form.get_by_label("Reason (for the audit)").fill("STOP received")
    form.get_by_role("button", name="Add suppression").click()
    assert "Suppression #" in aud.locator("#result").inner_text()
    assert t.patient_key.split("|")[1] not in aud.url
    [s] = p.rows(Suppression)
    aud.get_by_role("link", name="Back to privacy").click()
    assert aud.get_by_role("link", name=t.patient_id).is_visible()
    shot(aud, "privacy-auditor")
    aud.get_by_role("link", name=t.patient_id).click()
    aud.wait_for_url(f"**/privacy/patients/{t.patient_id}")
    shot(aud, "privacy-patient-auditor")
    aud.get_by_label(f"Reason for revoking suppression {s.id}").fill("opted back in")
    aud.get_by_role("button", name=f"Revoke suppression #{s.id}").click()
    assert "revoked" in aud.locator("#result").inner_text()
    assert p.rows(Suppression)[0].revoked_at is not None
    # the audit page shows each action with its actor and channel
    aud.goto("/audit")
    body = aud.locator("table.audit tbody")
    for action, actor in (("destination.pause", "otto"), ("destination.resume", "otto"), ("suppression.add", "aud"),
                          ("suppression.revoke", "aud")):
        row = body.locator(f'tr[data-action="{action}"]').first
        assert actor in row.inner_text() and "console" in row.inner_text()
    assert "STOP received" in body.inner_text() and "opted back in" in body.inner_text()
    assert t.patient_key.split("|")[1] not in aud.content()
    assert aud.evaluate("() => document.documentElement.scrollWidth") <= 1280  # long keys wrap, no sideways scrolling
    shot(aud, "audit-auditor")
    aud.get_by_label("Action").fill("suppression.revoke")
    aud.get_by_role("button", name="Filter", exact=True).click()
    assert aud.locator("table.audit tbody tr").count() == 1
    # the analyst is refused all three pages
    ana = signed_in("ana")
    for path in ("/deliveries", "/privacy", "/audit"):
        ana.goto(path)
        assert ana.get_by_role("heading", name="Not allowed").is_visible(), path
