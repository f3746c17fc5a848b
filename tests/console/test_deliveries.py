"""The deliveries page (TestClient over the real app, real database of the selected backend): dead
letters made by a real loopback receiver answering 400, listed with their attempts, filtered,
paginated by keyset, inspected (masked body, disclosure rows), replayed one and by filter after a
confirm step, destinations paused and resumed; analysts refused; every action in the admin audit."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from middleware.api.privacy import destination_states
from middleware.delivery.sink import SinkServer
from middleware.storage.queries import admin_audit as aq
from middleware.storage.queries.delivery import PAUSED
from middleware.storage.sql import unit
from middleware.storage.tables import DeliveryRow, KeyValue, TriggerRow
from tests.support.console import client, console_runtime, sign_in, write_users
from tests.support.api_client import api_for
from tests.support.delivery_pipeline import WEBHOOK_SECRET, Pipeline, destination, make_pipeline, write_mappings

FIXTURES = ["siu_s26_v251.hl7", "adt_a03_v23.hl7"]


def deliver(p: Any) -> None:
    """Run the delivery worker in its own thread: when the browser tests ran earlier in this session,
    Playwright's sync API keeps an event loop running in the main thread (asyncio.run would refuse)."""
    th = threading.Thread(target=lambda: p.deliver(p.worker()))
    th.start()
    th.join(120)
    assert not th.is_alive()


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Any:
    """Dead letters on two webhook destinations (every first attempt answered 400) and a console on the same database."""
    with SinkServer([WEBHOOK_SECRET]) as sink:
        dests = [destination("hook", "webhook", webhook_url=sink.url + "/a"),
                 destination("hook2", "webhook", webhook_url=sink.url + "/b")]
        p = make_pipeline(db_url, write_mappings(tmp_path, dests))
        for f in FIXTURES:
            p.ingest([f])
        p.fire()
        n = len(p.rows(DeliveryRow))
        sink.respond_with(400, times=n)
        deliver(p)
        rt = console_runtime(db_url, p.mappings, write_users(tmp_path / "users.yaml"))
        yield p, rt


def _audit(rt: Any, action: str) -> list[Any]:
    with unit(rt.engine) as u:
        return aq.page(u, limit=50, action=action, actor=None, since=None, before_id=None)


def _dead(p: Pipeline) -> list[DeliveryRow]:
    return sorted(p.rows(DeliveryRow, DeliveryRow.status == "dead"), key=lambda d: d.id)  # type: ignore[no-any-return]


def test_lists_dead_letters_with_attempts_filters_and_pages(world: Any) -> None:
    p, rt = world
    dead = _dead(p)
    assert len(dead) >= 4
    c = client(rt)
    sign_in(c, "otto")
    page = c.get("/deliveries")
    assert page.status_code == 200
    ids = [int(x) for x in re.findall(r'href="/deliveries/(\d+)"', page.text)]
    assert ids == sorted((d.id for d in dead), reverse=True)
    assert "HTTP 400" in page.text and "<td>400</td>" in page.text
    assert page.text.count('class="attempts"') == len(dead)  # each row lists its attempts
    hook2 = c.get("/deliveries", params={"destination": "hook2"}).text
    assert set(re.findall(r'href="/deliveries/(\d+)"', hook2)) == {str(d.id) for d in dead if d.destination == "hook2"}
    assert "Nothing matches" in c.get("/deliveries", params={"status": "delivered"}).text
    rules = c.get("/deliveries", params={"rule_id": "noshow-reengagement"}).text
    assert 1 <= len(re.findall(r'href="/deliveries/(\d+)"', rules)) < len(dead)
    # keyset pages of 2: every dead letter once, newest first, then no "Older" link
    seen: list[int] = []
    url: str | None = "/deliveries?limit=2"
    while url:
        text = c.get(url.replace("&amp;", "&")).text
        seen += [int(x) for x in re.findall(r'href="/deliveries/(\d+)"', text)]
        m = re.search(r'rel="next" href="([^"]+)"', text)
        url = (m.group(1) + "&limit=2") if m else None
    assert seen == ids
    # destinations and their state
    assert re.search(r'data-destination="hook".*?state-healthy', page.text, re.S)


def test_inspect_shows_attempts_masked_body_and_disclosures(world: Any) -> None:
    p, rt = world
    d = _dead(p)[0]
    c = client(rt)
    sign_in(c, "otto")
    r = c.get(f"/deliveries/{d.id}")
    assert r.status_code == 200
    assert "HTTP 400" in r.text and "Replay delivery" in r.text
    assert '"contact_key"' in r.text and '"trigger_name"' in r.text
    with unit(rt.engine) as u:
        key = u.conn.exec_driver_sql(f"SELECT patient_key FROM \"trigger\" WHERE id = {d.trigger_id}").scalar()
    assert key and key.split("|")[-1] not in r.text  # the MRN is nowhere on the page
    assert "Nothing disclosed by this delivery" in r.text  # refused: nothing left
    assert c.get("/deliveries/999999").status_code == 404


def test_replay_one_and_filter_with_confirm_and_audit(world: Any) -> None:
    p, rt = world
    dead = _dead(p)
    c = client(rt)
    csrf = sign_in(c, "otto")
    one = dead[0]
    r = c.post("/deliveries/replay", data={"csrf": csrf, "delivery_id": one.id, "status": "dead", "reason": "fixed receiver"})
    assert r.status_code == 200 and "1 delivery put back to pending" in r.text
    assert {d.id: d.status for d in p.rows(DeliveryRow)}[one.id] == "pending"
    [row] = _audit(rt, "deliveries.replay")
    assert (row.actor, row.channel, row.target_kind, row.target_id, row.reason) == ("otto", "console", "delivery", str(one.id),
                                                                                    "fixed receiver")
    # a filter: confirm shows how many match, nothing changes until confirmed
    left = [d for d in dead[1:] if d.destination == "hook2"]
    r = c.post("/deliveries/replay/confirm", data={"csrf": csrf, "destination": "hook2", "status": "dead"})
    assert re.search(rf"<strong>{len(left)}</strong> dead deliver", r.text)
    assert sum(d.status == "dead" for d in p.rows(DeliveryRow)) == len(dead) - 1
    r = c.post("/deliveries/replay", data={"csrf": csrf, "destination": "hook2", "status": "dead", "reason": "batch"})
    assert f"{len(left)} deliver" in r.text
    assert {d.status for d in p.rows(DeliveryRow, DeliveryRow.destination == "hook2")} <= {"pending"}
    rows = _audit(rt, "deliveries.replay")
    assert rows[0].target_kind == "destination" and rows[0].target_id == "hook2" and json.loads(rows[0].detail)["replayed"] == len(left)
    # a non-replayable status is refused and audited as such
    r = c.post("/deliveries/replay", data={"csrf": csrf, "destination": "hook", "status": "delivered"})
    assert r.status_code == 422 and _audit(rt, "deliveries.replay")[0].outcome == "refused"


def test_pause_and_resume_a_destination(world: Any) -> None:
    p, rt = world
    c = client(rt)
    csrf = sign_in(c, "otto")
    r = c.post("/deliveries/destinations/hook/pause", data={"csrf": csrf, "reason": "vendor maintenance"})
    assert r.status_code == 200 and "hook paused" in r.text
    assert [k.key for k in p.rows(KeyValue, KeyValue.key == PAUSED + "hook")] == [PAUSED + "hook"]
    page = c.get("/deliveries").text
    assert re.search(r'data-destination="hook".*?state-paused.*?vendor maintenance.*?Resume hook', page, re.S)
    # the API sees the same state
    assert {s.name: s.state for s in destination_states(rt)}["hook"] == "paused"
    r = c.post("/deliveries/destinations/hook/resume", data={"csrf": csrf, "reason": "back"})
    assert "hook resumed" in r.text and not p.rows(KeyValue, KeyValue.key == PAUSED + "hook")
    assert re.search(r'data-destination="hook".*?state-healthy', c.get("/deliveries").text, re.S)
    [pause] = _audit(rt, "destination.pause")
    [resume] = _audit(rt, "destination.resume")
    assert (pause.actor, pause.channel, pause.target_id, pause.reason) == ("otto", "console", "hook", "vendor maintenance")
    assert (resume.actor, resume.target_id, resume.reason) == ("otto", "hook", "back")


def test_analyst_refused_auditor_reads_only_and_csrf(world: Any) -> None:
    p, rt = world
    c = client(rt)
    csrf = sign_in(c, "ana")
    assert c.get("/deliveries").status_code == 403
    assert c.post("/deliveries/destinations/hook/pause", data={"csrf": csrf}).status_code == 403
    assert c.post("/deliveries/replay", data={"csrf": csrf, "status": "dead"}).status_code == 403
    assert not p.rows(KeyValue, KeyValue.key == PAUSED + "hook")
    assert not _audit(rt, "destination.pause") and not _audit(rt, "deliveries.replay")
    c2 = client(rt)
    csrf2 = sign_in(c2, "otto")
    assert c2.post("/deliveries/destinations/hook/pause", data={"csrf": "forged"}).status_code == 403
    assert c2.post("/deliveries/destinations/hook/pause", data={"csrf": csrf2}).status_code == 200


def test_api_pause_is_audited_and_reported(world: Any) -> None:
    """The API gained ``POST /api/destinations/{name}/pause`` and ``GET /api/destinations`` (the page's source)."""
    p, rt = world
    api = api_for(p)
    r = api.post("/api/destinations/hook2/pause", headers={"X-Careloop-Reason": "maintenance"})
    assert r.json() == {"destination": "hook2", "paused": True}
    assert api.post("/api/destinations/hook2/pause").json()["paused"] is False
    states = {s["name"]: s for s in api.get("/api/destinations").json()["items"]}
    assert states["hook2"]["state"] == "paused" and states["hook2"]["reason"] == "maintenance"
    assert states["hook"]["state"] == "healthy"
    rows = _audit(rt, "destination.pause")
    assert [(x.channel, x.target_id, x.reason) for x in rows] == [("api", "hook2", None), ("api", "hook2", "maintenance")]
    assert api.post("/api/destinations/hook2/resume").json()["resumed"] is True
    assert {s["name"]: s["state"] for s in api.get("/api/destinations").json()["items"]}["hook2"] == "healthy"


def test_body_masks_an_mrn_contact_key(db_url: str, tmp_path: Path) -> None:
    """A destination whose policy sends the MRN as contact key: the page shows *** in its place."""
    from tests.support.delivery_pipeline import DEFAULT_ALLOW

    policy = {"mode": "fields", "allow": DEFAULT_ALLOW, "identifiers": "mrn"}
    p = make_pipeline(db_url, write_mappings(tmp_path, [destination("mrnhook", "webhook", policy=policy)]))
    p.ingest(["siu_s26_v251.hl7"])
    p.fire()
    [d] = p.rows(DeliveryRow)[:1]
    rt = console_runtime(db_url, p.mappings, write_users(tmp_path / "users.yaml"))
    c = client(rt)
    sign_in(c, "otto")
    text = c.get(f"/deliveries/{d.id}").text
    body = json.loads(re.search(r'<pre class="raw" id="body">(.*?)</pre>', text, re.S).group(1).replace("&#34;", '"'))  # type: ignore[union-attr]
    assert body["contact_key"] == "***" and body["destination"] == "mrnhook" and body["payload"]
    [t] = [t for t in p.rows(TriggerRow) if t.id == d.trigger_id]
    assert t.patient_key.split("|")[1] not in text


def test_api_serves_what_the_page_shows(world: Any) -> None:
    """``GET /api/deliveries/problems``, ``/api/deliveries/{id}`` and ``/api/deliveries/replay/count``: the page's functions."""
    p, rt = world
    api = api_for(p)
    dead = _dead(p)
    page = api.get("/api/deliveries/problems", params={"limit": 3}).json()
    assert [i["id"] for i in page["items"]] == sorted((d.id for d in dead), reverse=True)[:3]
    assert page["items"][0]["history"][0]["status_code"] == 400 and page["next_before_id"] == page["items"][-1]["id"]
    rest = api.get("/api/deliveries/problems", params={"limit": 100, "before_id": page["next_before_id"]}).json()
    assert len(page["items"]) + len(rest["items"]) == len(dead) and rest["next_before_id"] is None
    one = api.get(f"/api/deliveries/{dead[0].id}").json()
    assert one["status"] == "dead" and one["disclosures"] == [] and one["history"][0]["error"] == "HTTP 400"
    assert api.get("/api/deliveries/999999").status_code == 404
    n2 = sum(d.destination == "hook2" for d in dead)
    assert api.get("/api/deliveries/replay/count", params={"destination": "hook2"}).json() == {"count": n2}
    assert api.get("/api/deliveries/replay/count", params={"status": "delivered"}).status_code == 422
