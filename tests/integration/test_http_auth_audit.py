"""Exposure and the admin audit, on a real server with named tokens.

With a token set the API description needs it; an unknown FHIR source answers 401 before
authentication (404 after); failed authentications are logged without the token and
throttled per client address (429 + Retry-After); every admin action is one append-only
admin-audit row whose actor is the token's name, readable with keyset pagination.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from middleware.delivery.audit import AppendOnlyError
from middleware.storage.tables import AdminAudit
from tests.support.server import InProcess, start_in_process

ALICE = "alice-synthetic-token-0123456789abcdef"
OPS = "ops-synthetic-token-0123456789abcdefgh"
FHIR_TOKEN = "fhir-synthetic-token-0123456789abcdef"


@pytest.fixture
def srv(tmp_path: Path, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[InProcess]:
    monkeypatch.setenv("CARELOOP_FHIR_TOKEN_DEFAULT", FHIR_TOKEN)
    s = start_in_process(db_url, mappings_dir, api_token=OPS,
                         api_tokens=f"alice:{ALICE}", auth_fail_limit=3, auth_fail_window_s=60.0)
    try:
        yield s
    finally:
        s.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_api_description_needs_the_token(srv: InProcess) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(srv.http_url + path).status_code == 401, path
        assert httpx.get(srv.http_url + path, headers=bearer(ALICE)).status_code == 200, path
    spec = httpx.get(srv.http_url + "/openapi.json", headers=bearer(OPS)).json()
    assert "/api/admin-audit" in spec["paths"]


def test_unknown_fhir_source_is_401_before_authentication(srv: InProcess) -> None:
    for method, path in (("GET", "/fhir/nosuch/metadata"), ("PUT", "/fhir/nosuch/Appointment/a1"), ("POST", "/fhir/nosuch")):
        r = httpx.request(method, srv.http_url + path, content=b"{}")
        assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome", (method, path)
    assert httpx.get(srv.http_url + "/fhir/default/metadata").status_code == 401
    # after authentication (a source token or an API token) an unknown source is 404
    assert httpx.get(srv.http_url + "/fhir/nosuch/metadata", headers=bearer(FHIR_TOKEN)).status_code == 404
    assert httpx.get(srv.http_url + "/fhir/nosuch/metadata", headers=bearer(ALICE)).status_code == 404
    assert httpx.get(srv.http_url + "/fhir/default/metadata", headers=bearer(FHIR_TOKEN)).status_code == 200


def test_failed_authentication_is_logged_and_throttled(srv: InProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="careloop.auth")
    wrong = "wrong-token-value-that-must-never-be-logged"
    for _ in range(3):
        assert httpx.get(srv.http_url + "/api/events", headers=bearer(wrong)).status_code == 401
    r = httpx.get(srv.http_url + "/api/events", headers=bearer(wrong))
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # the address is throttled: the right token waits too, and so do the FHIR endpoints
    assert httpx.get(srv.http_url + "/api/events", headers=bearer(ALICE)).status_code == 429
    assert httpx.get(srv.http_url + "/fhir/default/metadata", headers=bearer(FHIR_TOKEN)).status_code == 429
    failed = [r for r in caplog.records if getattr(r, "action", None) == "auth.failed"]
    assert len(failed) == 3
    assert all(getattr(r, "client", None) == "127.0.0.1" and getattr(r, "path", None) == "/api/events" for r in failed)
    for rec in caplog.records:
        assert wrong not in rec.getMessage() and wrong not in repr(rec.__dict__)
    metrics = httpx.get(srv.http_url + "/metrics").text
    assert "careloop_auth_failures_total 3.0" in metrics and "careloop_auth_throttled_clients 1.0" in metrics
    # one admin-audit row for the throttle, not one per failure
    with Session(srv.runtime.engine) as s:
        rows = list(s.exec(select(AdminAudit)))
    assert [(r.action, r.target_id, r.outcome) for r in rows] == [("auth.throttled", "127.0.0.1", "refused")]


def test_admin_actions_are_audited_with_the_token_name(srv: InProcess) -> None:
    h = {**bearer(ALICE), "X-Careloop-Reason": "ticket OPS-1", "X-Request-ID": "req-42"}
    c = httpx.Client(base_url=srv.http_url, headers=h, timeout=10)
    pk = "urn:oid:2.16.840.1.113883.3.9999.1|MRN000123"
    assert c.post("/api/mappings/reload").status_code == 200
    assert c.post("/api/deliveries/replay", params={"destination": "webhook"}).status_code == 200
    assert c.post("/api/messages/999/replay").status_code == 404
    sid = c.post("/api/suppressions", json={"patient_key": pk}).json()["id"]
    assert c.delete(f"/api/suppressions/{sid}").status_code == 200
    aid = c.post("/api/authorizations", json={"patient_key": pk}).json()["id"]
    assert c.delete(f"/api/authorizations/{aid}").status_code == 200
    consent = {"resourceType": "Consent", "id": "c1", "status": "inactive", "scope": {"text": "x"},
               "category": [{"text": "marketing"}]}
    assert c.post("/api/consents", json=consent, params={"patient_key": pk}).status_code == 201
    assert c.post("/api/destinations/webhook/resume", headers=bearer(OPS)).status_code == 200

    page = c.get("/api/admin-audit").json()
    items = page["items"]
    assert [i["action"] for i in items] == [
        "destination.resume", "consent.add", "authorization.revoke", "authorization.add", "suppression.revoke",
        "suppression.add", "message.replay", "deliveries.replay", "mappings.reload"]
    assert items[0]["actor"] == "api" and {i["actor"] for i in items[1:]} == {"alice"}
    by = {i["action"]: i for i in items}
    assert by["message.replay"]["outcome"] == "refused" and by["message.replay"]["target_id"] == "999"
    assert by["deliveries.replay"]["reason"] == "ticket OPS-1" and by["deliveries.replay"]["request_id"] == "req-42"
    assert by["deliveries.replay"]["client"] == "127.0.0.1" and by["deliveries.replay"]["detail"]["replayed"] == 0
    assert by["consent.add"]["detail"]["revoked"] is True
    # patients appear as pseudonymous contact keys, never as the MRN
    assert by["suppression.add"]["target_id"].startswith("ck_")
    assert "MRN000123" not in str(page)
    # filters and keyset pagination
    assert [i["action"] for i in c.get("/api/admin-audit", params={"action": "suppression.add"}).json()["items"]] == ["suppression.add"]
    assert len(c.get("/api/admin-audit", params={"actor": "api"}).json()["items"]) == 1
    assert c.get("/api/admin-audit", params={"since": "2099-01-01"}).json()["items"] == []
    seen, before = [], None
    while True:
        params = {"limit": 4, **({"before_id": before} if before else {})}
        p = c.get("/api/admin-audit", params=params).json()
        seen += [i["id"] for i in p["items"]]
        before = p["next_before_id"]
        if before is None:
            break
    assert seen == [i["id"] for i in items]
    assert c.get("/api/admin-audit", params={"since": "yesterday"}).status_code == 422


def test_admin_audit_is_append_only(srv: InProcess) -> None:
    httpx.post(srv.http_url + "/api/mappings/reload", headers=bearer(ALICE))
    with Session(srv.runtime.engine) as s:
        row = s.exec(select(AdminAudit)).one()
        row.outcome = "ok-edited"
        s.add(row)
        with pytest.raises(AppendOnlyError):
            s.commit()
        s.rollback()
        with pytest.raises(AppendOnlyError):
            s.delete(s.exec(select(AdminAudit)).one())
            s.commit()
        s.rollback()
        with pytest.raises(AppendOnlyError):
            s.exec(update(AdminAudit).values(outcome="x"))  # type: ignore[call-overload]


def test_sighup_reload_is_audited_as_the_service(srv: InProcess) -> None:
    srv.runtime.reload_on_signal()
    items = httpx.get(srv.http_url + "/api/admin-audit", headers=bearer(ALICE)).json()["items"]
    assert [(i["action"], i["actor"], i["channel"], i["outcome"]) for i in items] == [
        ("mappings.reload", "careloop", "service", "ok")]
    assert items[0]["detail"] == {"signal": "SIGHUP"}
