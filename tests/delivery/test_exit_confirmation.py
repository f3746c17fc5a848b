"""Journey Builder exits are asynchronous (issue 17): the worker sends the contact exit (202), keeps
the exit ``pending`` and polls the status endpoint; "Exit process Completed." confirms it; no
confirmation within ``confirm_within_s`` (or a refusal) marks it ``unconfirmed`` and opens an alert
that ``careloop deliveries alerts``, /api/alerts and the metrics show. respx stands in for SFMC."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import respx
from sqlmodel import Session

from middleware.delivery.admin import alerts
from middleware.storage.tables import DeliveryRow, TriggerRow

from support.delivery_pipeline import Pipeline, destination, make_pipeline, write_mappings

REST = "https://mc-test.rest.marketingcloudapis.com"
AUTH = "https://mc-test.auth.marketingcloudapis.com/v2/token"


def _world(db_url: str, tmp_path: Path, **exit_cfg: Any) -> Pipeline:
    d = destination("jb", "sfmc", exit={"journey_key": "remind-journey", "poll_every_s": 30, "confirm_within_s": 600,
                                        **exit_cfg})
    p = make_pipeline(db_url, write_mappings(tmp_path, [d]))
    p.clock.now = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    return p


def _an_exit(p: Pipeline) -> int:
    """A fired reminder delivered to Journey Builder, and the exit a cancellation opened for it."""
    now = p.clock().timestamp()
    with Session(p.engine) as s:
        t = TriggerRow(rule_id="appointment-reminder-72h", ruleset_version="v1", name="reminder", purpose="treatment",
                       destinations="jb", patient_key="urn:mrn|P1", origin_key="o1", due_at=now - 60, status="fired",
                       payload=orjson.dumps({"appointment_start": "2026-01-08T10:00:00Z"}).decode(), created_at=now,
                       updated_at=now, fired_at=now - 60)
        s.add(t)
        s.flush()
        s.add(DeliveryRow(trigger_id=t.id or 0, destination="jb", idempotency_key="cl_entry", status="delivered",
                          next_attempt_at=now, created_at=now, updated_at=now, confirmation="accepted"))
        ex = DeliveryRow(trigger_id=t.id or 0, destination="jb", idempotency_key="cx_exit", kind="exit",
                         next_attempt_at=now, created_at=now, updated_at=now)
        s.add(ex)
        s.commit()
        return ex.id or 0


def _round(p: Pipeline, confirm: bool = False) -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as http:
            w = p.worker(http=http)
            if confirm:
                await w.confirm_once()
            else:
                await w.run_once()
    asyncio.run(go())


def _row(p: Pipeline, did: int) -> DeliveryRow:
    [row] = p.rows(DeliveryRow, DeliveryRow.id == did)
    return row


def _token() -> httpx.Response:
    return httpx.Response(200, json={"access_token": "tok", "expires_in": 1079, "rest_instance_url": REST + "/"})


def _status(req: httpx.Request, message: str) -> httpx.Response:
    """The status endpoint's answer for every contact the request names."""
    return httpx.Response(200, json=[{"contactKey": e["ContactKey"], "definitionKey": e["DefinitionKey"],
                                      "status": [{"version": 1, "message": message}]} for e in json.loads(req.content)])


@respx.mock
def test_exit_pending_then_confirmed(db_url: str, tmp_path: Path) -> None:
    p = _world(db_url, tmp_path)
    did = _an_exit(p)
    respx.post(AUTH).mock(return_value=_token())
    sent = respx.post(f"{REST}/interaction/v1/interactions/contactexit").mock(return_value=httpx.Response(202, json={"errors": []}))
    _round(p)
    row = _row(p, did)
    assert row.status == "delivered" and row.confirmation == "pending"
    assert row.confirm_by == p.clock().timestamp() + 600
    [body] = [json.loads(c.request.content) for c in sent.calls]
    assert body == [{"ContactKey": body[0]["ContactKey"], "DefinitionKey": "remind-journey"}] and body[0]["ContactKey"]

    status = respx.post(f"{REST}/interaction/v1/interactions/contactexit/status")
    contact = body[0]["ContactKey"]
    status.mock(return_value=httpx.Response(200, json=[{"contactKey": contact, "definitionKey": "remind-journey",
                                                        "status": [{"version": 1, "message": "Exit request received for processing"}]}]))
    _round(p, confirm=True)
    assert status.call_count == 0  # not due before poll_every_s
    p.clock.advance(seconds=31)
    _round(p, confirm=True)
    assert status.call_count == 1 and _row(p, did).confirmation == "pending"
    status.mock(return_value=httpx.Response(200, json=[{"contactKey": contact, "definitionKey": "remind-journey",
                                                        "status": [{"version": 1, "message": "Exit process Completed."}]}]))
    p.clock.advance(seconds=31)
    _round(p, confirm=True)
    row = _row(p, did)
    assert row.confirmation == "confirmed" and row.confirmed_at == p.clock().timestamp()
    assert alerts(p.engine, open_only=True) == []


@respx.mock
def test_exit_never_confirmed_raises_an_alert(db_url: str, tmp_path: Path) -> None:
    p = _world(db_url, tmp_path)
    did = _an_exit(p)
    respx.post(AUTH).mock(return_value=_token())
    respx.post(f"{REST}/interaction/v1/interactions/contactexit").mock(return_value=httpx.Response(202, json={"errors": []}))
    respx.post(f"{REST}/interaction/v1/interactions/contactexit/status").mock(return_value=httpx.Response(503))
    _round(p)
    for _ in range(25):  # 25 polls of 30 s: past confirm_within_s (600 s)
        p.clock.advance(seconds=31)
        _round(p, confirm=True)
    row = _row(p, did)
    assert row.confirmation == "unconfirmed" and "not confirmed in time" in (row.last_error or "")
    [alert] = alerts(p.engine, open_only=True)
    assert alert["kind"] == "exit-unconfirmed" and alert["destination"] == "jb" and alert["delivery_id"] == did


@respx.mock
def test_exit_refused_by_status_is_unconfirmed_at_once(db_url: str, tmp_path: Path) -> None:
    p = _world(db_url, tmp_path)
    did = _an_exit(p)
    respx.post(AUTH).mock(return_value=_token())
    respx.post(f"{REST}/interaction/v1/interactions/contactexit").mock(return_value=httpx.Response(202, json={"errors": []}))
    _round(p)
    respx.post(f"{REST}/interaction/v1/interactions/contactexit/status").mock(
        side_effect=lambda req: _status(req, "Exit request Ignored - Invalid Interaction Name."))
    p.clock.advance(seconds=31)
    _round(p, confirm=True)
    row = _row(p, did)
    assert row.confirmation == "unconfirmed" and "Invalid Interaction Name" in (row.last_error or "")
    assert [a["kind"] for a in alerts(p.engine, open_only=True)] == ["exit-unconfirmed"]


def test_exit_settings_reach_the_connector(db_url: str, tmp_path: Path) -> None:
    p = _world(db_url, tmp_path, versions=[2, 3])
    w = p.worker(http=httpx.AsyncClient())
    conn = w._connector(p.rs.destinations["jb"])
    assert conn.exit_settings is not None and conn.exit_settings.versions == [2, 3]
    assert timedelta(seconds=conn.exit_settings.poll_every_s) == timedelta(seconds=30)
