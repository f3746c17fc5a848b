"""The overview through the real app (TestClient) and the rollups behind its sparklines (SQLite and
PostgreSQL): figures equal to ``GET /api/overview``'s, rollups filled incrementally (never twice)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from middleware.storage.queries import kv, rollups
from middleware.storage.queries.ingest import INBOX_COLUMNS
from middleware.storage.sql import unit
from middleware.storage.tables import DeliveryAttempt, DeliveryRow
from tests.console.seed import row
from tests.support.console import client, console_runtime, sign_in, write_users


@pytest.fixture
def rt(db_url: str, mappings_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return console_runtime(db_url, mappings_dir, write_users(tmp_path / "users.yaml"))


def store(engine, rows: list[dict]) -> None:  # type: ignore[no-untyped-def,type-arg]
    with unit(engine, write=True) as u:
        u.many("inbox.insert", [{c: r[c] for c in INBOX_COLUMNS} for r in rows])


def minutes_ago(now: float, m: float) -> float:
    return now - m * 60


def test_rollups_fill_incrementally_once_each(rt) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    store(rt.engine, [row(i, received_at=minutes_ago(now, 5)) for i in range(7)]
          + [row(100 + i, received_at=minutes_ago(now, 90), channel="fhir", source="hapi") for i in range(3)]
          + [row(200, received_at=now - 5)])  # inside the grace period: waits for the next run
    rollups.fill(rt.engine, now, batch=4)  # several batches
    rollups.fill(rt.engine, now, batch=4)  # nothing new: nothing added twice
    got = {(r.key, r.minute): r.n for r in rollups.per_minute(rt.engine, "ingest", int(now // 60) - 1440)}
    assert got == {("hl7v2:epic", int(minutes_ago(now, 5) // 60)): 7, ("fhir:hapi", int(minutes_ago(now, 90) // 60)): 3}
    rollups.fill(rt.engine, now + 60)  # a minute later the recent one is counted
    total = sum(r.n for r in rollups.per_minute(rt.engine, "ingest", int(now // 60) - 1440))
    assert total == 11


def test_overview_shows_the_api_figures_from_rollups(rt) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    store(rt.engine, [row(i, received_at=minutes_ago(now, 3 + i % 10)) for i in range(30)]
          + [row(100 + i, received_at=minutes_ago(now, 600), channel="fhir", source="hapi") for i in range(4)]
          + [row(300 + i, received_at=minutes_ago(now, 2), status="received") for i in range(2)])
    with unit(rt.engine, write=True) as u:
        for i, status in enumerate(["dead", "dead", "delivered", "pending"]):
            u.session.add(DeliveryRow(trigger_id=i + 1, destination="webhook", idempotency_key=f"k{i}", status=status,
                                      next_attempt_at=now, created_at=now, updated_at=now))
        u.session.flush()
        u.session.add(DeliveryAttempt(delivery_id=1, at=minutes_ago(now, 4), outcome="retry", error="HTTP 503"))
        kv.put_json(u, "destination.paused.webhook", {"reason": "static credentials refused (401); circuit open until resumed",
                                                      "since": now - 60, "delivery_id": 1}, now)
        kv.put_json(u, "fhir.reconcile.hapi", {"at": now - 120, "types": ["Appointment"], "arrival": "reconcile",
                                               "reason": "interval", "resources": 12, "deletes": 1, "stored": 3, "errors": []}, now)
    c = client(rt)
    sign_in(c, "ana")  # analysts see the overview too
    before = c.get("/").text
    assert "Nothing received in the last day" in before  # figures come from the rollups, not the messages
    rollups.fill(rt.engine, now)
    page = c.get("/")
    assert page.status_code == 200
    api = c.get("/api/overview").json()
    html = page.text
    ingest = {s["key"]: s for s in api["ingest"]}
    assert ingest["hl7v2:epic"]["last_hour"] == 32 and ingest["fhir:hapi"]["last_hour"] == 0
    assert ingest["fhir:hapi"]["last_day"] == 4
    assert re.search(r'data-figure="backlog">2<', html) and api["backlog"] == 2
    assert re.search(r'data-figure="dead">2<', html) and api["dead_letters"] == 2
    assert api["deliveries"] == {"dead": 2, "delivered": 1, "pending": 1}
    assert '<td data-delivery="dead">2</td>' in html
    dest = {d["name"]: d for d in api["destinations"]}
    assert dest["webhook"]["state"] == "auth failure" and dest["webhook"]["dead"] == 2
    assert re.search(r'data-destination="webhook">.*?auth failure', html, re.S)
    assert api["reconciler"][0]["stored"] == 3 and "<td>3</td>" in html
    # sparklines: inline SVG named by their text summary, and the summary as text
    assert 'role="img" aria-label="hl7v2:epic: 32 messages in the last hour' in html
    assert "32 messages in the last hour" in html and "4 messages in the last day" in html
    assert {s["key"] for s in api["attempts"]} == {"retry"}
    body = c.get("/overview/body")
    assert body.status_code == 200 and "<html" not in body.text and "data-figure" in body.text
    assert 'hx-get="/overview/body"' in html


def test_overview_needs_a_session(rt) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    assert c.get("/").status_code == 303
    assert c.get("/overview/body").status_code == 303


def test_backlog_is_counted_up_to_a_cap_with_the_oldest_age(rt) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    store(rt.engine, [row(i, status="received", received_at=now - 100 + i) for i in range(3)] + [row(9, received_at=now - 500)])
    capped = rollups.now_figures(rt.engine, now, backlog_cap=2)
    assert (capped.backlog, capped.backlog_capped, capped.oldest_received_at) == (2, True, now - 100)
    full = rollups.now_figures(rt.engine, now)
    assert (full.backlog, full.backlog_capped) == (3, False)


def test_the_service_loop_brings_rollups_up_to_date(rt) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    now = time.time()
    store(rt.engine, [row(i, received_at=minutes_ago(now, 2)) for i in range(4)])

    async def one_round() -> None:
        task = asyncio.create_task(rt._rollup_loop(every_s=3600))
        for _ in range(200):
            await asyncio.sleep(0.05)
            if rollups.per_minute(rt.engine, "ingest", int(now // 60) - 10):
                break
        task.cancel()

    asyncio.run(one_round())
    assert [(r.key, r.n) for r in rollups.per_minute(rt.engine, "ingest", int(now // 60) - 10)] == [("hl7v2:epic", 4)]
