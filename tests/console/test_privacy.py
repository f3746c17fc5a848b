"""The privacy page (TestClient over the real app, the selected backend): suppressions,
authorizations and consents viewed, added (by a typed identifier in a POST body, or by internal
id) and revoked with the API's validation and writes; the disclosure audit of one patient and its
CSV export; patients by internal id in every link, never an MRN; operators and analysts refused
the changes; every change and export in the admin audit."""
from __future__ import annotations

import csv
import io
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from middleware.api.deps import pseudonym
from middleware.delivery.sink import SinkServer
from middleware.storage.queries import admin_audit as aq
from middleware.storage.tables import Authorization, ConsentRecord, Disclosure, Suppression, TriggerRow
from middleware.storage.sql import unit
from tests.support.console import client, console_runtime, sign_in, write_users
from tests.support.delivery_pipeline import WEBHOOK_SECRET, destination, make_pipeline, write_mappings


def deliver(p: Any) -> None:
    """Run the delivery worker in its own thread: when the browser tests ran earlier in this session,
    Playwright's sync API keeps an event loop running in the main thread (asyncio.run would refuse)."""
    th = threading.Thread(target=lambda: p.deliver(p.worker()))
    th.start()
    th.join(120)
    assert not th.is_alive()


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Any:
    """One synthetic patient's no-show trigger delivered to a real loopback webhook (a disclosure row)."""
    with SinkServer([WEBHOOK_SECRET]) as sink:
        p = make_pipeline(db_url, write_mappings(tmp_path, [destination("hook", "webhook", webhook_url=sink.url + "/a")]))
        p.ingest(["siu_s26_v251.hl7"])
        p.fire()
        deliver(p)
        assert p.rows(Disclosure)
        rt = console_runtime(db_url, p.mappings, write_users(tmp_path / "users.yaml"))
        [t] = p.rows(TriggerRow)[:1]
        yield p, rt, t.patient_key, t.patient_id


def _audit(rt: Any, action: str) -> list[Any]:
    with unit(rt.engine) as u:
        return aq.page(u, limit=50, action=action, actor=None, since=None, before_id=None)


def _mrn(key: str) -> str:
    return key.split("|", 1)[1]


def test_suppression_added_by_identifier_listed_by_id_and_revoked(world: Any) -> None:
    p, rt, key, pid = world
    c = client(rt)
    csrf = sign_in(c, "aud")
    r = c.post("/privacy/suppressions", data={"csrf": csrf, "patient_key": key, "destination": "hook", "category": "STOP reply",
                                              "source": "sms-stop", "reason": "patient called"})
    assert r.status_code == 200 and "Suppression #" in r.text and f"/privacy/patients/{pid}" in r.text
    [s] = p.rows(Suppression)
    assert (s.patient_key, s.destination, s.reason, s.source, s.revoked_at) == (key, "hook", "STOP reply", "sms-stop", None)
    page = c.get("/privacy")
    assert f'href="/privacy/patients/{pid}"' in page.text and f"Revoke suppression #{s.id}" in page.text
    assert _mrn(key) not in page.text
    [row] = _audit(rt, "suppression.add")
    assert (row.actor, row.channel, row.target_kind, row.reason) == ("aud", "console", "patient", "patient called")
    assert row.target_id == pseudonym(_Req(rt), key) and _mrn(key) not in (row.detail or "")
    assert json.loads(row.detail)["patient_id"] == pid
    # revoke
    r = c.post(f"/privacy/suppressions/{s.id}/revoke", data={"csrf": csrf, "reason": "opted back in"})
    assert r.status_code == 200 and "revoked" in r.text
    assert p.rows(Suppression)[0].revoked_at is not None
    assert "No suppressions" in c.get("/privacy").text
    [rev] = _audit(rt, "suppression.revoke")
    assert (rev.target_kind, rev.target_id, rev.reason) == ("suppression", str(s.id), "opted back in")
    # validation: the API's model refuses an unknown source; an identifier without a system is refused
    assert c.post("/privacy/suppressions", data={"csrf": csrf, "patient_key": key, "source": "fax"}).status_code == 422
    assert c.post("/privacy/suppressions", data={"csrf": csrf, "patient_key": "12345"}).status_code == 422
    assert len(p.rows(Suppression)) == 1


class _Req:
    """Just enough of a request for ``pseudonym`` (it reads the runtime's settings)."""

    def __init__(self, rt: Any) -> None:
        self.app = type("A", (), {"state": type("S", (), {"runtime": rt})()})()


def test_patient_page_authorization_consent_and_disclosures(world: Any) -> None:
    p, rt, key, pid = world
    c = client(rt)
    csrf = sign_in(c, "aud")
    assert c.post("/privacy/authorizations", data={"csrf": csrf, "patient_id": pid, "reference": "scan-42",
                                                   "reason": "signed form"}).status_code == 200
    [au] = p.rows(Authorization)
    assert (au.patient_key, au.purpose, au.reference) == (key, "marketing", "scan-42")
    assert c.post("/privacy/consents", data={"csrf": csrf, "patient_id": pid, "provision": "deny"}).status_code == 200
    [co] = p.rows(ConsentRecord)
    assert co.status == "active" and co.patient_key == key and json.loads(co.resource)["provision"]["type"] == "deny"
    page = c.get(f"/privacy/patients/{pid}")
    assert page.status_code == 200 and _mrn(key) not in page.text
    assert f"Revoke authorization #{au.id}" in page.text and f"Revoke consent #{co.id}" in page.text
    [d] = p.rows(Disclosure)
    assert "hook" in page.text and d.purpose in page.text and f"#{d.delivery_id}" in page.text
    # revoke both
    assert c.post(f"/privacy/authorizations/{au.id}/revoke", data={"csrf": csrf}).status_code == 200
    assert c.post(f"/privacy/consents/{co.id}/revoke", data={"csrf": csrf}).status_code == 200
    assert p.rows(Authorization)[0].revoked_at is not None
    [co2] = p.rows(ConsentRecord)
    assert co2.status == "inactive" and co2.id == co.id
    actions = [(r.action, r.outcome) for r in _audit(rt, "authorization.add") + _audit(rt, "authorization.revoke")
               + _audit(rt, "consent.add")]
    assert sorted(actions) == [("authorization.add", "ok"), ("authorization.revoke", "ok"), ("consent.add", "ok"),
                               ("consent.add", "ok")]
    assert json.loads(_audit(rt, "consent.add")[0].detail)["revoked"] is True
    # find by identifier: a POST, answered with a redirect to the internal id
    r = c.post("/privacy/find", data={"csrf": csrf, "patient_key": key})
    assert r.status_code == 303 and r.headers["location"] == f"/privacy/patients/{pid}"
    assert c.get("/privacy/patients/pt_unknownunknownunknownunkn").status_code == 404


def test_disclosure_csv_export_is_audited_and_carries_no_mrn(world: Any) -> None:
    p, rt, key, pid = world
    c = client(rt)
    sign_in(c, "aud")
    r = c.get(f"/privacy/patients/{pid}/disclosures.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    [d] = p.rows(Disclosure)
    assert [(x["patient_key"], x["destination"], x["purpose"], x["body_sha256"]) for x in rows] == [
        (pid, "hook", d.purpose, d.body_sha256)]
    assert _mrn(key) not in r.text
    [row] = _audit(rt, "disclosures.export")
    assert (row.actor, row.channel, row.target_kind) == ("aud", "console", "patient")
    assert json.loads(row.detail) == {"patient_id": pid, "rows": 1, "format": "csv"}


@pytest.mark.parametrize("who", ["otto", "ana"])
def test_operator_and_analyst_refused(world: Any, who: str) -> None:
    p, rt, key, pid = world
    c = client(rt)
    csrf = sign_in(c, who)
    assert c.get("/privacy").status_code == 403
    assert c.get(f"/privacy/patients/{pid}/disclosures.csv").status_code == 403
    assert c.post("/privacy/suppressions", data={"csrf": csrf, "patient_key": key}).status_code == 403
    assert not p.rows(Suppression) and not _audit(rt, "suppression.add") and not _audit(rt, "disclosures.export")


def test_links_never_carry_an_identifier(world: Any) -> None:
    p, rt, key, pid = world
    c = client(rt)
    csrf = sign_in(c, "root")
    c.post("/privacy/suppressions", data={"csrf": csrf, "patient_key": key})
    for url in ("/privacy", f"/privacy/patients/{pid}"):
        text = c.get(url).text
        hrefs = re.findall(r'(?:href|action)="([^"]+)"', text)
        assert hrefs and not [h for h in hrefs if _mrn(key) in h or "|" in h]


def test_suppressions_list_is_keyset_paginated(world: Any) -> None:
    p, rt, key, pid = world
    c = client(rt)
    csrf = sign_in(c, "aud")
    for dest in ("a", "b", "c", "d", "e"):
        assert c.post("/privacy/suppressions", data={"csrf": csrf, "patient_key": key, "destination": dest}).status_code == 200
    seen: list[int] = []
    url: str | None = "/privacy?limit=2"
    while url:
        text = c.get(url).text
        seen += [int(x) for x in re.findall(r'data-suppression="(\d+)"', text)]
        m = re.search(r'rel="next" href="([^"]+)"', text)
        url = (m.group(1) + "&limit=2") if m else None
    assert seen == sorted((s.id for s in p.rows(Suppression)), reverse=True)
