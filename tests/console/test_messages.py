"""The message browser through the real app (TestClient): filters, keyset pages both ways,
masking by default, the audited reveal, and who may replay (SQLite and PostgreSQL)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from middleware.storage.queries import admin_audit as aq, operator as q
from middleware.storage.sql import unit
from tests.console.seed import seed
from tests.support.console import client, console_runtime, sign_in, write_users


@pytest.fixture
def rt(db_url: str, mappings_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return console_runtime(db_url, mappings_dir, write_users(tmp_path / "users.yaml"))


@pytest.fixture
def ids(rt) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return seed(rt.engine)


def listed(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'<a href="/messages/(\d+)">', html)]


def audit_rows(rt, action: str) -> list[aq.AdminAuditRecord]:  # type: ignore[no-untyped-def]
    with unit(rt.engine) as u:
        return aq.page(u, limit=50, action=action, actor=None, since=None, before_id=None)


def test_filters_select_by_status_source_type_control_id_time_and_error(rt, ids) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    sign_in(c, "otto")
    assert listed(c.get("/messages?status=failed").text) == [ids["failed"]]
    assert listed(c.get("/messages?errored=1").text) == [ids["failed"]]
    assert listed(c.get("/messages?source=hapi").text) == [ids["fhir"]]
    assert listed(c.get("/messages?source=epic&message_type=ADT%5EA01").text) == [ids["failed"]]
    assert listed(c.get("/messages?control_id=CTRL-7").text) == [ids["failed"] - 113]
    # times: received_at is 1_765_000_000 + i (2025-12-06T05:46:40Z + i s); [i=10, i=13)
    page = c.get("/messages?since=2025-12-06T05:46:50&until=2025-12-06T05:46:53").text
    assert len(listed(page)) == 3 and "CTRL-10<" in page and "CTRL-12<" in page and "CTRL-13<" not in page
    bad = c.get("/messages?since=yesterday")
    assert bad.status_code == 200 and "expected an ISO 8601" in bad.text


def test_keyset_pages_older_then_newer_without_overlap(rt, ids) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    sign_in(c, "otto")
    first = c.get("/messages").text
    p1 = listed(first)
    assert len(p1) == 50 and p1 == sorted(p1, reverse=True) and p1[0] == ids["fhir"]
    assert "Newer" not in first
    older = re.search(r'href="/messages\?([^"]*before_id=\d+)"', first)
    assert older
    second = c.get("/messages?" + older.group(1).replace("&amp;", "&")).text
    p2 = listed(second)
    assert len(p2) == 50 and max(p2) < min(p1)
    newer = re.search(r'href="/messages\?([^"]*after_id=\d+)"', second)
    assert newer
    assert listed(c.get("/messages?" + newer.group(1).replace("&amp;", "&")).text) == p1
    # the last page has no "Older" link; every message was listed exactly once
    seen, html = p1 + p2, second
    while (link := re.search(r'href="/messages\?([^"]*before_id=\d+)"', html)) is not None:
        html = c.get("/messages?" + link.group(1).replace("&amp;", "&")).text
        seen += listed(html)
    assert len(seen) == len(set(seen)) == 122


def test_api_pages_with_the_same_query(rt, ids) -> None:  # type: ignore[no-untyped-def]
    from tests.support.console import client as _client

    with unit(rt.engine) as u:
        direct = [m.id for m in q.messages(u, limit=5, where=q.MessageFilter(status="processed", source="epic"))]
    c = _client(rt)
    r = c.get("/api/messages?status=processed&source=epic&limit=5")  # no API tokens configured: open
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["id"] for m in body["items"]] == direct and body["next_before_id"] == direct[-1]
    assert body["prev_after_id"] is None
    older = c.get(f"/api/messages?status=processed&source=epic&limit=5&before_id={direct[-1]}").json()
    assert older["prev_after_id"] == older["items"][0]["id"] and max(m["id"] for m in older["items"]) < direct[-1]
    assert c.get("/api/messages?control_id=CTRL-FAIL-1").json()["items"][0]["id"] == ids["failed"]


def test_masked_by_default_with_field_names_ack_and_events(rt, ids) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    sign_in(c, "otto")
    r = c.get(f"/messages/{ids['failed']}")
    assert r.status_code == 200
    assert "QUINCEWORTH" not in r.text and "MRN0042" not in r.text and "19700314" not in r.text
    assert 'title="PID-5 Patient Name"' in r.text and 'title="MSH-10 Message Control Id"' in r.text
    assert "MSA" in r.text and "ACK-1" in r.text  # the ACK careloop sent
    assert "encounter.started" in r.text and "/patients/pt_SYNTHETICPATIENT0000000001" in r.text
    assert "urn:hospa|MRN0042" not in r.text  # events show the internal patient id, not the key
    assert "Reveal" not in r.text  # an operator holds no reveal permission
    fhir = c.get(f"/messages/{ids['fhir']}").text
    assert "QUINCEWORTH" not in fhir and "1970-03-14" not in fhir and "&#34;gender&#34;: &#34;female&#34;" in fhir
    assert r.headers["cache-control"] == "no-store"


def test_reveal_needs_permission_and_reason_and_is_audited(rt, ids) -> None:  # type: ignore[no-untyped-def]
    op = client(rt)
    op_csrf = sign_in(op, "otto")
    assert op.post(f"/messages/{ids['failed']}/reveal", data={"csrf": op_csrf, "reason": "ticket 42"}).status_code == 403
    admin = client(rt)
    csrf = sign_in(admin, "root")
    assert admin.post(f"/messages/{ids['failed']}/reveal", data={"reason": "ticket 42"}).status_code == 403  # no CSRF
    short = admin.post(f"/messages/{ids['failed']}/reveal", data={"csrf": csrf, "reason": ""})
    assert short.status_code == 422 and "QUINCEWORTH" not in short.text
    r = admin.post(f"/messages/{ids['failed']}/reveal", data={"csrf": csrf, "reason": "ticket 42: wrong ward"})
    assert r.status_code == 200 and "QUINCEWORTH" in r.text and "MRN0042" in r.text
    assert r.headers["cache-control"] == "no-store"
    assert "QUINCEWORTH" not in admin.get(f"/messages/{ids['failed']}").text  # the next view is masked again
    rows = audit_rows(rt, "console.reveal")
    assert [(x.actor, x.channel, x.outcome, x.target_kind, x.target_id, x.reason) for x in rows] == [
        ("root", "console", "ok", "message", str(ids["failed"]), "ticket 42: wrong ward"),
        ("root", "console", "refused", "message", str(ids["failed"]), None)]
    assert "QUINCEWORTH" not in str(rows)


def test_replay_authorization_and_audit(rt, ids) -> None:  # type: ignore[no-untyped-def]
    analyst = client(rt)
    a_csrf = sign_in(analyst, "ana")
    assert analyst.get("/messages").status_code == 403
    assert analyst.post(f"/messages/{ids['failed']}/replay", data={"csrf": a_csrf}).status_code == 403
    op = client(rt)
    csrf = sign_in(op, "otto")
    page = op.get(f"/messages/{ids['failed']}").text
    assert f'action="/messages/{ids["failed"]}/replay"' in page
    assert "/replay" not in op.get(f"/messages/{ids['fhir']}").text  # processed: no replay offered
    assert op.post(f"/messages/{ids['failed']}/replay", data={"csrf": "forged"}).status_code == 403
    assert op.post(f"/messages/{ids['fhir']}/replay", data={"csrf": csrf}).status_code == 409
    r = op.post(f"/messages/{ids['failed']}/replay", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == f"/messages/{ids['failed']}?replayed=1"
    with unit(rt.engine) as u:
        m = q.message(u, ids["failed"])
    assert m is not None and m.status == "received" and m.error is None
    rows = audit_rows(rt, "message.replay")
    assert [(x.actor, x.channel, x.outcome, x.target_id) for x in rows] == [
        ("otto", "console", "ok", str(ids["failed"])), ("otto", "console", "refused", str(ids["fhir"]))]
