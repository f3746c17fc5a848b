"""Contract: Braze /users/track events and /canvas/trigger/send."""
from __future__ import annotations

import json

import httpx
import pytest
import respx

from middleware.delivery.connectors.braze import BrazeConfig, BrazeConnector
from middleware.delivery.registry import AuthFailure, Delivered, Permanent, Retry, SecretSource

pytestmark = pytest.mark.anyio

BASE = "https://rest.iad-01.braze.com"
ENV = SecretSource({"BRAZE_KEY": "braze-rest-key"})


def connector(http, clock, **cfg):
    return BrazeConnector("braze", BrazeConfig(rest_endpoint=BASE, api_key_env="BRAZE_KEY", **cfg), http, ENV,
                          clock=clock)


@respx.mock
async def test_track_request_format(http, clock, item_factory):
    route = respx.post(f"{BASE}/users/track").mock(
        return_value=httpx.Response(201, json={"message": "success", "events_processed": 1}))
    assert await connector(http, clock).send_batch([item_factory(1)]) == [Delivered(201)]
    req = route.calls.last.request
    assert req.headers["authorization"] == "Bearer braze-rest-key"
    assert json.loads(req.content) == {"events": [{
        "external_id": "ck_0001", "name": "noshow_reengage", "time": "2025-03-04T09:30:00.000Z",
        "properties": {"appointment_id": "appt-1", "clinic": "north"}}]}


@respx.mock
async def test_track_minor_errors_map_to_items(http, clock, item_factory):
    respx.post(f"{BASE}/users/track").mock(return_value=httpx.Response(201, json={
        "message": "success", "errors": [{"type": "'time' is not a valid time", "input_array": "events", "index": 1}]}))
    out = await connector(http, clock).send_batch([item_factory(1), item_factory(2), item_factory(3)])
    assert [type(o) for o in out] == [Delivered, Permanent, Delivered]


@respx.mock
async def test_track_75_per_request(http, clock, item_factory):
    route = respx.post(f"{BASE}/users/track").mock(return_value=httpx.Response(201, json={"message": "success"}))
    out = await connector(http, clock).send_batch([item_factory(n) for n in range(100)])
    assert len(out) == 100
    assert [len(json.loads(c.request.content)["events"]) for c in route.calls] == [75, 25]
    assert BrazeConnector.max_batch == 75


@respx.mock
async def test_canvas_mode_format_and_50_limit(http, clock, item_factory):
    route = respx.post(f"{BASE}/canvas/trigger/send").mock(
        return_value=httpx.Response(201, json={"dispatch_id": "d1", "message": "success"}))
    out = await connector(http, clock, mode="canvas", canvas_id="cv-123").send_batch(
        [item_factory(n) for n in range(60)])
    assert all(isinstance(o, Delivered) for o in out) and len(out) == 60
    bodies = [json.loads(c.request.content) for c in route.calls]
    assert [len(b["recipients"]) for b in bodies] == [50, 10]
    assert bodies[0]["canvas_id"] == "cv-123"
    assert bodies[0]["recipients"][0] == {"external_user_id": "ck_0000",
                                          "canvas_entry_properties": {"appointment_id": "appt-0", "clinic": "north"}}


@respx.mock
async def test_static_key_401_is_auth_failure(http, clock, item_factory):
    respx.post(f"{BASE}/users/track").mock(return_value=httpx.Response(401, json={"message": "Invalid API key"}))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, AuthFailure)


@respx.mock
async def test_429_retry_after_and_reset(http, clock, item_factory):
    reset = int(clock().timestamp()) + 42
    respx.post(f"{BASE}/users/track").mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "12"}),
        httpx.Response(429, headers={"X-RateLimit-Reset": str(reset)}),
    ])
    c = connector(http, clock)
    assert (await c.send_batch([item_factory()])) == [Retry("HTTP 429 rate limited", 12.0, 429)]
    assert (await c.send_batch([item_factory()]))[0].after_s == 42.0


@respx.mock
async def test_5xx_timeout_malformed(http, clock, item_factory):
    respx.post(f"{BASE}/users/track").mock(side_effect=[
        httpx.Response(500), httpx.ReadTimeout("t"), httpx.Response(201, content=b"not-json")])
    c = connector(http, clock)
    assert isinstance((await c.send_batch([item_factory()]))[0], Retry)
    assert isinstance((await c.send_batch([item_factory()]))[0], Retry)
    assert (await c.send_batch([item_factory()])) == [Delivered(201)]  # accepted; body unreadable


@respx.mock
async def test_fatal_error_message_is_permanent(http, clock, item_factory):
    respx.post(f"{BASE}/canvas/trigger/send").mock(
        return_value=httpx.Response(400, json={"message": "Invalid canvas_id"}))
    out = await connector(http, clock, mode="canvas", canvas_id="x").send_batch([item_factory(1), item_factory(2)])
    assert out == [Permanent("HTTP 400: Invalid canvas_id", 400)] * 2


def test_config_validation():
    with pytest.raises(ValueError):
        BrazeConfig(rest_endpoint=BASE, api_key_env="K", mode="canvas")
    with pytest.raises(ValueError):
        BrazeConfig(rest_endpoint="http://plain", api_key_env="K")
