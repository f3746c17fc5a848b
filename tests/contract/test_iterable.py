"""Contract: Iterable events/track and trackBulk with the idempotency key as event id."""
from __future__ import annotations

import json

import httpx
import pytest
import respx

from middleware.delivery.connectors.iterable import IterableConfig, IterableConnector
from middleware.delivery.registry import AuthFailure, Delivered, Permanent, Retry, SecretSource

pytestmark = pytest.mark.anyio

API = "https://api.iterable.com/api"
ENV = SecretSource({"ITBL_KEY": "itbl-key"})


def connector(http, clock, **cfg):
    return IterableConnector("itbl", IterableConfig(api_key_env="ITBL_KEY", **cfg), http, ENV, clock=clock)


@respx.mock
async def test_track_request_format(http, clock, item_factory):
    route = respx.post(f"{API}/events/track").mock(
        return_value=httpx.Response(200, json={"msg": "Event with id: idem-0001 tracked.", "code": "Success"}))
    assert await connector(http, clock, campaign_id=77).send_batch([item_factory(1)]) == [Delivered(200)]
    req = route.calls.last.request
    assert req.headers["api-key"] == "itbl-key"
    assert json.loads(req.content) == {
        "id": "idem-0001", "eventName": "noshow_reengage", "userId": "ck_0001",
        "dataFields": {"appointment_id": "appt-1", "clinic": "north"},
        "createdAt": 1741080600, "campaignId": 77}
    assert IterableConnector.native_dedup is True


@respx.mock
async def test_email_identity_from_payload(http, clock, item_factory):
    route = respx.post(f"{API}/events/track").mock(return_value=httpx.Response(200, json={"code": "Success"}))
    item = item_factory(1, payload={"email": "p@example.test", "clinic": "north"})
    await connector(http, clock, identity="email", identity_source="email").send_batch([item])
    body = json.loads(route.calls.last.request.content)
    assert body["email"] == "p@example.test" and "userId" not in body
    assert body["dataFields"] == {"clinic": "north"}


@respx.mock
async def test_track_bulk_with_invalid_user_ids(http, clock, item_factory):
    route = respx.post(f"{API}/events/trackBulk").mock(return_value=httpx.Response(200, json={
        "successCount": 2, "failCount": 1, "invalidEmails": [], "invalidUserIds": ["ck_0002"]}))
    out = await connector(http, clock).send_batch([item_factory(n) for n in (1, 2, 3)])
    assert [type(o) for o in out] == [Delivered, Permanent, Delivered]
    body = json.loads(route.calls.last.request.content)
    assert [e["id"] for e in body["events"]] == ["idem-0001", "idem-0002", "idem-0003"]


@respx.mock
async def test_non_success_code_is_permanent(http, clock, item_factory):
    respx.post(f"{API}/events/track").mock(return_value=httpx.Response(200, json={"code": "InvalidEmailAddressError"}))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, Permanent) and "InvalidEmailAddressError" in out.reason


@respx.mock
async def test_failures(http, clock, item_factory):
    respx.post(f"{API}/events/track").mock(side_effect=[
        httpx.Response(401, json={"code": "BadApiKey"}), httpx.Response(400, json={"code": "BadParams"}),
        httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(500, content=b"<html>"),
        httpx.ReadTimeout("t"), httpx.Response(200, content=b"{oops")])
    c = connector(http, clock)
    r = [(await c.send_batch([item_factory()]))[0] for _ in range(6)]
    assert isinstance(r[0], AuthFailure)
    assert r[1] == Permanent("HTTP 400: Iterable code BadParams", 400)
    assert r[2] == Retry("HTTP 429", 1.0, 429)
    assert isinstance(r[3], Retry) and isinstance(r[4], Retry)
    assert r[5] == Delivered(200)  # 2xx with unreadable body: accepted


@respx.mock
async def test_bulk_chunks_of_100(http, clock, item_factory):
    route = respx.post(f"{API}/events/trackBulk").mock(return_value=httpx.Response(200, json={"successCount": 1}))
    out = await connector(http, clock).send_batch([item_factory(n) for n in range(150)])
    assert len(out) == 150
    assert [len(json.loads(c.request.content)["events"]) for c in route.calls] == [100, 50]


async def test_overlong_id_is_permanent(http, clock, item_factory):
    [out] = await connector(http, clock).send_batch([item_factory(1, idempotency_key="k" * 513)])
    assert isinstance(out, Permanent)
