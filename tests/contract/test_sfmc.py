"""Contract: Salesforce Marketing Cloud entry events (token caching, refresh, batch, throttling)."""
from __future__ import annotations

import json

import httpx
import pytest
import respx

from middleware.delivery.connectors.sfmc import SfmcConfig, SfmcConnector
from middleware.delivery.registry import AuthFailure, Delivered, Permanent, Retry, SecretSource

pytestmark = pytest.mark.anyio

AUTH = "https://mc-tenant1.auth.marketingcloudapis.com/v2/token"
REST = "https://mc-tenant1.rest.marketingcloudapis.com"
ENV = SecretSource({"SFMC_ID": "cid", "SFMC_SECRET": "csecret"})


def accepted(ref: str | None = None) -> Delivered:
    """An entry event Journey Builder took: recorded as accepted (no lookup of an entry is documented)."""
    return Delivered(201, "accepted (Journey Builder documents no lookup of an entry)", confirmation="accepted", vendor_ref=ref)


def token_response(token: str = "tok-1", expires_in: int = 1079) -> httpx.Response:
    return httpx.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": expires_in,
                                     "rest_instance_url": REST + "/", "scope": "journeys_execute"})


def connector(http, clock, **cfg):
    config = SfmcConfig(subdomain="mc-tenant1", client_id_env="SFMC_ID", client_secret_env="SFMC_SECRET",
                        account_id="5100001", event_definition_key="APIEvent-noshow", **cfg)
    return SfmcConnector("sfmc", config, http, ENV, clock=clock)


@respx.mock
async def test_single_event_request_and_token_cached(http, clock, item_factory):
    auth = respx.post(AUTH).mock(return_value=token_response())
    fire = respx.post(f"{REST}/interaction/v1/events").mock(
        return_value=httpx.Response(201, json={"eventInstanceId": "e-1"}))
    c = connector(http, clock)
    assert await c.send_batch([item_factory(1)]) == [accepted("e-1")]
    assert await c.send_batch([item_factory(2)]) == [accepted("e-1")]
    assert auth.call_count == 1  # cached, not per call
    assert json.loads(auth.calls.last.request.content) == {
        "grant_type": "client_credentials", "client_id": "cid", "client_secret": "csecret", "account_id": "5100001"}
    req = fire.calls.last.request
    assert req.headers["authorization"] == "Bearer tok-1"
    assert json.loads(req.content) == {
        "ContactKey": "ck_0002", "EventDefinitionKey": "APIEvent-noshow",
        "Data": {"appointment_id": "appt-2", "clinic": "north"}}


@respx.mock
async def test_token_refetched_after_expiry_minus_margin(http, clock, item_factory):
    auth = respx.post(AUTH).mock(side_effect=[token_response("tok-1"), token_response("tok-2")])
    fire = respx.post(f"{REST}/interaction/v1/events").mock(return_value=httpx.Response(201, json={}))
    c = connector(http, clock)
    await c.send_batch([item_factory()])
    clock.advance(1079 - 60 - 1)
    await c.send_batch([item_factory()])
    assert auth.call_count == 1
    clock.advance(2)
    await c.send_batch([item_factory()])
    assert auth.call_count == 2
    assert fire.calls.last.request.headers["authorization"] == "Bearer tok-2"


@respx.mock
async def test_401_refreshes_once_and_retries_once(http, clock, item_factory):
    auth = respx.post(AUTH).mock(side_effect=[token_response("old"), token_response("new")])
    fire = respx.post(f"{REST}/interaction/v1/events").mock(
        side_effect=[httpx.Response(401), httpx.Response(201, json={})])
    assert await connector(http, clock).send_batch([item_factory()]) == [accepted()]
    assert auth.call_count == 2
    assert [c.request.headers["authorization"] for c in fire.calls] == ["Bearer old", "Bearer new"]


@respx.mock
async def test_401_twice_is_auth_failure(http, clock, item_factory):
    auth = respx.post(AUTH).mock(side_effect=[token_response("a"), token_response("b"), token_response("c")])
    fire = respx.post(f"{REST}/interaction/v1/events").mock(return_value=httpx.Response(401))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, AuthFailure)
    assert auth.call_count == 2 and fire.call_count == 2  # refreshed once, retried once


@respx.mock
async def test_token_refused_is_auth_failure(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=httpx.Response(401, json={"error": "invalid_client"}))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, AuthFailure)


@respx.mock
async def test_malformed_token_body_is_retry(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=httpx.Response(200, content=b"<html>oops"))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, Retry) and "malformed" in out.reason


@respx.mock
async def test_429_retry_after_honoured(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=token_response())
    respx.post(f"{REST}/interaction/v1/events").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "5"}, json={"errorcode": 50100}))
    assert await connector(http, clock).send_batch([item_factory()]) == [Retry("HTTP 429 throttled", 5.0, 429)]


@respx.mock
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retry(http, clock, item_factory, status):
    respx.post(AUTH).mock(return_value=token_response())
    respx.post(f"{REST}/interaction/v1/events").mock(return_value=httpx.Response(status, content=b"not json"))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, Retry) and out.status_code == status


@respx.mock
async def test_400_is_permanent_with_message(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=token_response())
    respx.post(f"{REST}/interaction/v1/events").mock(
        return_value=httpx.Response(400, json={"message": "Event definition key not found", "errorcode": 30000}))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert out == Permanent("HTTP 400: Event definition key not found", 400)


@respx.mock
async def test_timeout_is_retry(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=token_response())
    respx.post(f"{REST}/interaction/v1/events").mock(side_effect=httpx.ConnectTimeout("t"))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, Retry)


@respx.mock
async def test_batch_uses_async_endpoint_with_per_member_errors(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=token_response())
    route = respx.post(f"{REST}/interaction/v1/async/events").mock(return_value=httpx.Response(202, json={
        "requestId": "r-1", "count": 3, "notQueuedCount": 1,
        "members": [{"contactKey": "ck_0001", "eventInstanceId": "i1"},
                    {"contactKey": "ck_0002", "errorcode": "10001", "message": "Invalid contact"},
                    {"contactKey": "ck_0003", "eventInstanceId": "i3"}]}))
    items = [item_factory(n) for n in (1, 2, 3)]
    out = await connector(http, clock).send_batch(items)
    assert [type(o) for o in out] == [Delivered, Permanent, Delivered]
    assert "10001" in out[1].reason
    body = json.loads(route.calls.last.request.content)
    assert body["eventDefinitionKey"] == "APIEvent-noshow"
    assert body["members"][0] == {"contactKey": "ck_0001", "data": {"appointment_id": "appt-1", "clinic": "north"}}


@respx.mock
async def test_batch_malformed_response_counts_as_queued(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=token_response())
    respx.post(f"{REST}/interaction/v1/async/events").mock(return_value=httpx.Response(202, content=b"{bad"))
    out = await connector(http, clock).send_batch([item_factory(1), item_factory(2)])
    assert all(isinstance(o, Delivered) for o in out)


@respx.mock
async def test_batch_limit_100_members(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=token_response())
    route = respx.post(f"{REST}/interaction/v1/async/events").mock(return_value=httpx.Response(202, json={}))
    out = await connector(http, clock).send_batch([item_factory(n) for n in range(150)])
    assert len(out) == 150 and all(isinstance(o, Delivered) for o in out)
    assert [len(json.loads(c.request.content)["members"]) for c in route.calls] == [100, 50]
    assert SfmcConnector.max_batch == 100


@respx.mock
async def test_batch_failure_applies_to_all(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=token_response())
    respx.post(f"{REST}/interaction/v1/async/events").mock(return_value=httpx.Response(503))
    out = await connector(http, clock).send_batch([item_factory(1), item_factory(2)])
    assert all(isinstance(o, Retry) for o in out)


def test_config_rejects_periods_and_inline_secrets():
    with pytest.raises(ValueError):
        SfmcConfig(subdomain="t", client_id_env="A", client_secret_env="B", event_definition_key="a.b")
    with pytest.raises(ValueError):
        SfmcConfig(subdomain="t", client_id_env="A", client_secret_env="B", event_definition_key="k",
                   client_secret="x")  # type: ignore[call-arg]
