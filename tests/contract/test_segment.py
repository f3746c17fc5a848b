"""Contract: Segment HTTP Tracking API, including validation before sending."""
from __future__ import annotations

import base64
import json

import httpx
import pytest
import respx

from middleware.delivery.connectors.segment import (
    MAX_BATCH_BYTES,
    SegmentConfig,
    SegmentConnector,
    pack_batches,
)
from middleware.delivery.registry import AuthFailure, Delivered, Permanent, Retry, SecretSource

pytestmark = pytest.mark.anyio

API = "https://api.segment.io"
ENV = SecretSource({"SEG_KEY": "wk_123"})
BASIC = "Basic " + base64.b64encode(b"wk_123:").decode()


def connector(http, clock, **cfg):
    return SegmentConnector("seg", SegmentConfig(write_key_env="SEG_KEY", **cfg), http, ENV, clock=clock)


@respx.mock
async def test_track_request_format(http, clock, item_factory):
    route = respx.post(f"{API}/v1/track").mock(return_value=httpx.Response(200, json={"success": True}))
    [out] = await connector(http, clock).send_batch([item_factory(1)])
    assert isinstance(out, Delivered) and out.status_code == 200
    req = route.calls.last.request
    assert req.headers["authorization"] == BASIC
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.content) == {
        "type": "track", "userId": "ck_0001", "event": "noshow_reengage",
        "properties": {"appointment_id": "appt-1", "clinic": "north"},
        "timestamp": "2025-03-04T09:30:00.000Z", "messageId": "idem-0001", "sentAt": "2025-03-04T12:00:00.000Z"}


@respx.mock
async def test_identify_call(http, clock, item_factory):
    route = respx.post(f"{API}/v1/identify").mock(return_value=httpx.Response(200))
    await connector(http, clock, call="identify", identity="anonymousId").send_batch([item_factory(1)])
    body = json.loads(route.calls.last.request.content)
    assert body["type"] == "identify" and body["anonymousId"] == "ck_0001"
    assert body["traits"] == {"appointment_id": "appt-1", "clinic": "north"} and "event" not in body


@respx.mock
async def test_batch_endpoint(http, clock, item_factory):
    route = respx.post(f"{API}/v1/batch").mock(return_value=httpx.Response(200))
    out = await connector(http, clock).send_batch([item_factory(1), item_factory(2)])
    assert all(isinstance(o, Delivered) for o in out)
    body = json.loads(route.calls.last.request.content)
    assert [m["messageId"] for m in body["batch"]] == ["idem-0001", "idem-0002"]


@respx.mock
async def test_oversize_event_rejected_before_sending(http, clock, item_factory):
    route = respx.post(f"{API}/v1/track").mock(return_value=httpx.Response(200))
    big = item_factory(1, payload={"blob": "x" * (32 * 1024)})
    ok = item_factory(2)
    out = await connector(http, clock).send_batch([big, ok])
    assert isinstance(out[0], Permanent) and "32 KB" in out[0].reason
    assert isinstance(out[1], Delivered)
    assert route.call_count == 1  # only the valid one went, as a single track call


async def test_missing_identity_and_event_rejected(http, clock, item_factory):
    c = connector(http, clock)
    [out] = await c.send_batch([item_factory(1, contact_key="")])
    assert isinstance(out, Permanent) and "userId or anonymousId" in out.reason
    [out] = await c.send_batch([item_factory(1, trigger_name="")])
    assert isinstance(out, Permanent) and "event name" in out.reason


@respx.mock
async def test_batch_split_at_500kb_and_2500_events(http, clock, item_factory):
    route = respx.post(f"{API}/v1/batch").mock(return_value=httpx.Response(200))
    items = [item_factory(n, payload={"blob": "y" * (30 * 1024)}) for n in range(20)]  # ~30 KB each
    out = await connector(http, clock).send_batch(items)
    assert all(isinstance(o, Delivered) for o in out)
    sizes = [len(c.request.content) for c in route.calls]
    assert len(sizes) == 2 and all(s <= MAX_BATCH_BYTES for s in sizes)
    assert [len(g) for g in pack_batches([10] * 6000)] == [2500, 2500, 1000]


@respx.mock
async def test_failures(http, clock, item_factory):
    respx.post(f"{API}/v1/track").mock(side_effect=[
        httpx.Response(400, json={"error": "too large"}), httpx.Response(401), httpx.Response(429, headers={
            "Retry-After": "2"}), httpx.Response(503), httpx.ConnectTimeout("t")])
    c = connector(http, clock)
    results = [(await c.send_batch([item_factory()]))[0] for _ in range(5)]
    assert isinstance(results[0], Permanent)
    assert isinstance(results[1], AuthFailure)
    assert results[2] == Retry("HTTP 429", 2.0, 429)
    assert isinstance(results[3], Retry) and isinstance(results[4], Retry)
