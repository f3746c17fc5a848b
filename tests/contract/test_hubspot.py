"""Contract: HubSpot custom event completions, contact upsert, static vs OAuth auth, 429 windows."""
from __future__ import annotations

import json
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from middleware.delivery.connectors.hubspot import HubSpotConfig, HubSpotConnector, event_uuid
from middleware.delivery.registry import AuthFailure, Delivered, Permanent, Retry, SecretSource

pytestmark = pytest.mark.anyio

SEND = "https://api.hubapi.com/events/v3/send"
BATCH = "https://api.hubapi.com/events/v3/send/batch"
UPSERT = "https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert"
TOKEN = "https://api.hubapi.com/oauth/v1/token"
ENV = SecretSource({"HS_TOKEN": "pat-na1-xyz", "HS_ID": "cid", "HS_SECRET": "csec", "HS_REFRESH": "rt-1"})


def static(http, clock, **cfg):
    config = HubSpotConfig(access_token_env="HS_TOKEN", event_name="pe4242_noshow_reengage", **cfg)
    return HubSpotConnector("hs", config, http, ENV, clock=clock)


def oauth(http, clock, **cfg):
    config = HubSpotConfig(auth="oauth", client_id_env="HS_ID", client_secret_env="HS_SECRET",
                           refresh_token_env="HS_REFRESH", event_name="pe4242_noshow_reengage", **cfg)
    return HubSpotConnector("hs", config, http, ENV, clock=clock)


def tok(value: str, expires_in: int = 1800) -> httpx.Response:
    return httpx.Response(200, json={"access_token": value, "refresh_token": "rt-1", "expires_in": expires_in,
                                     "token_type": "bearer"})


@respx.mock
async def test_single_event_format(http, clock, item_factory):
    route = respx.post(SEND).mock(return_value=httpx.Response(204))
    item = item_factory(1, payload={"email": "pat@example.test", "appointment_id": "appt-1"})
    assert await static(http, clock, identity="email", identity_source="email").send_batch([item]) == [Delivered(204)]
    req = route.calls.last.request
    assert req.headers["authorization"] == "Bearer pat-na1-xyz"
    assert json.loads(req.content) == {
        "eventName": "pe4242_noshow_reengage",
        "email": "pat@example.test",
        "occurredAt": "2025-03-04T09:30:00.000Z",
        "properties": {"appointment_id": "appt-1"},
        "uuid": event_uuid("idem-0001"),
    }


@respx.mock
async def test_batch_endpoint_inputs(http, clock, item_factory):
    route = respx.post(BATCH).mock(return_value=httpx.Response(204))
    out = await static(http, clock).send_batch([item_factory(1), item_factory(2)])
    assert out == [Delivered(204), Delivered(204)]
    body = json.loads(route.calls.last.request.content)
    assert [i["objectId"] for i in body["inputs"]] == ["ck_0001", "ck_0002"]
    assert all(i["eventName"] == "pe4242_noshow_reengage" for i in body["inputs"])


@respx.mock
async def test_batch_failure_applies_to_all(http, clock, item_factory):
    respx.post(BATCH).mock(return_value=httpx.Response(400, json={"status": "error", "category": "VALIDATION_ERROR",
                                                                  "message": "Property x value pat@example.test"}))
    out = await static(http, clock).send_batch([item_factory(1), item_factory(2)])
    assert out == [Permanent("HTTP 400: VALIDATION_ERROR", 400)] * 2  # message (may echo values) not kept


@respx.mock
async def test_static_token_401_is_auth_failure_without_refresh(http, clock, item_factory):
    route = respx.post(SEND).mock(return_value=httpx.Response(401))
    token = respx.post(TOKEN)
    [out] = await static(http, clock).send_batch([item_factory()])
    assert isinstance(out, AuthFailure)
    assert route.call_count == 1 and token.call_count == 0


@respx.mock
async def test_oauth_token_cached_and_refresh_form(http, clock, item_factory):
    token = respx.post(TOKEN).mock(return_value=tok("at-1"))
    send = respx.post(SEND).mock(return_value=httpx.Response(204))
    c = oauth(http, clock)
    await c.send_batch([item_factory(1)])
    await c.send_batch([item_factory(2)])
    assert token.call_count == 1
    form = parse_qs(token.calls.last.request.content.decode())
    assert form == {"grant_type": ["refresh_token"], "client_id": ["cid"], "client_secret": ["csec"],
                    "refresh_token": ["rt-1"]}
    assert send.calls.last.request.headers["authorization"] == "Bearer at-1"


@respx.mock
async def test_oauth_401_refreshes_once(http, clock, item_factory):
    token = respx.post(TOKEN).mock(side_effect=[tok("at-1"), tok("at-2")])
    send = respx.post(SEND).mock(side_effect=[httpx.Response(401), httpx.Response(204)])
    assert await oauth(http, clock).send_batch([item_factory()]) == [Delivered(204)]
    assert token.call_count == 2
    assert [c.request.headers["authorization"] for c in send.calls] == ["Bearer at-1", "Bearer at-2"]


@respx.mock
async def test_oauth_401_after_refresh_is_auth_failure(http, clock, item_factory):
    respx.post(TOKEN).mock(side_effect=[tok("at-1"), tok("at-2")])
    send = respx.post(SEND).mock(return_value=httpx.Response(401))
    [out] = await oauth(http, clock).send_batch([item_factory()])
    assert isinstance(out, AuthFailure) and send.call_count == 2


@respx.mock
async def test_oauth_refresh_refused_is_auth_failure(http, clock, item_factory):
    respx.post(TOKEN).mock(return_value=httpx.Response(400, json={"status": "BAD_REFRESH_TOKEN"}))
    [out] = await oauth(http, clock).send_batch([item_factory()])
    assert isinstance(out, AuthFailure)


@respx.mock
async def test_oauth_malformed_token_json_is_retry(http, clock, item_factory):
    respx.post(TOKEN).mock(return_value=httpx.Response(200, content=b"]["))
    [out] = await oauth(http, clock).send_batch([item_factory()])
    assert isinstance(out, Retry)


@respx.mock
async def test_429_uses_ten_second_window_header(http, clock, item_factory):
    respx.post(SEND).mock(return_value=httpx.Response(
        429, headers={"X-HubSpot-RateLimit-Interval-Milliseconds": "10000", "X-HubSpot-RateLimit-Max": "190",
                      "X-HubSpot-RateLimit-Remaining": "0"},
        json={"status": "error", "policyName": "TEN_SECONDLY_ROLLING"}))
    [out] = await static(http, clock).send_batch([item_factory()])
    assert out == Retry("HTTP 429 rate limited (TEN_SECONDLY_ROLLING)", 10.0, 429)


@respx.mock
async def test_429_retry_after_wins_and_daily_waits_long(http, clock, item_factory):
    respx.post(SEND).mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(429, json={"policyName": "DAILY"}),
        httpx.Response(429, content=b"garbage"),
    ])
    c = static(http, clock)
    assert (await c.send_batch([item_factory()]))[0].after_s == 3.0
    assert (await c.send_batch([item_factory()]))[0].after_s == 3600.0
    assert (await c.send_batch([item_factory()]))[0].after_s == 10.0


@respx.mock
async def test_5xx_and_timeout_are_retry(http, clock, item_factory):
    respx.post(SEND).mock(side_effect=[httpx.Response(502), httpx.ReadTimeout("t")])
    c = static(http, clock)
    assert isinstance((await c.send_batch([item_factory()]))[0], Retry)
    assert isinstance((await c.send_batch([item_factory()]))[0], Retry)


@respx.mock
async def test_upsert_before_events_when_configured(http, clock, item_factory):
    upsert = respx.post(UPSERT).mock(return_value=httpx.Response(200, json={"status": "COMPLETE", "results": []}))
    send = respx.post(SEND).mock(return_value=httpx.Response(204))
    c = static(http, clock, identity="email", identity_source="email", upsert_contact=True,
               contact_properties=["firstname"])
    item = item_factory(1, payload={"email": "pat@example.test", "firstname": "Pat", "appointment_id": "a1"})
    assert await c.send_batch([item]) == [Delivered(204)]
    assert json.loads(upsert.calls.last.request.content) == {
        "inputs": [{"id": "pat@example.test", "idProperty": "email", "properties": {"firstname": "Pat"}}]}
    assert json.loads(send.calls.last.request.content)["properties"] == {"appointment_id": "a1"}


@respx.mock
async def test_upsert_failure_skips_events(http, clock, item_factory):
    respx.post(UPSERT).mock(return_value=httpx.Response(503))
    send = respx.post(SEND)
    c = static(http, clock, identity="email", identity_source="email", upsert_contact=True)
    [out] = await c.send_batch([item_factory(1, payload={"email": "p@example.test"})])
    assert isinstance(out, Retry) and send.call_count == 0


@respx.mock
async def test_property_limits_checked_before_sending(http, clock, item_factory):
    route = respx.post(SEND).mock(return_value=httpx.Response(204))
    too_many = item_factory(1, payload={f"p{i}": i for i in range(51)})
    too_long = item_factory(2, payload={"note": "x" * 51})
    url_ok = item_factory(3, payload={"booking_url": "https://x.test/" + "y" * 150})
    out = await static(http, clock).send_batch([too_many, too_long, url_ok])
    assert isinstance(out[0], Permanent) and "50" in out[0].reason
    assert isinstance(out[1], Permanent) and "note" in out[1].reason
    assert out[2] == Delivered(204)
    assert route.call_count == 1


async def test_missing_identity_is_permanent(http, clock, item_factory):
    c = static(http, clock, identity="email", identity_source="email")
    [out] = await c.send_batch([item_factory(1, payload={})])
    assert isinstance(out, Permanent)


def test_config_validation():
    with pytest.raises(ValueError):
        HubSpotConfig(access_token_env="T", event_name="noshow")  # not pe{HubID}_{name}
    with pytest.raises(ValueError):
        HubSpotConfig(auth="oauth", event_name="pe1_x", client_id_env="A")
    with pytest.raises(ValueError):
        HubSpotConfig(access_token_env="T", event_name="pe1_x", access_token="inline")  # type: ignore[call-arg]
