"""Contract: the webhook connector's request (Standard Webhooks v1) and failure mapping."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json

import httpx
import pytest
import respx

from middleware.delivery.connectors.webhook import WebhookConfig, WebhookConnector
from middleware.delivery.registry import AuthFailure, Delivered, Disable, Permanent, Retry, SecretSource
from middleware.delivery.signing import WebhookVerificationError, sign, verify

pytestmark = pytest.mark.anyio

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_KEY = b"fedcba9876543210fedcba9876543210"
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
URL = "https://hooks.example.test/careloop"


def connector(http, clock, **cfg):
    config = WebhookConfig(url=URL, secret_env="HOOK_SECRET", **cfg)
    env = SecretSource({"HOOK_SECRET": SECRET, "HOOK_SECRET_OLD": OLD_SECRET})
    return WebhookConnector("hook", config, http, env, clock=clock)


def expected_sig(key: bytes, msg_id: str, ts: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@respx.mock
async def test_request_format_and_signature(http, clock, item_factory):
    route = respx.post(URL).mock(return_value=httpx.Response(204))
    out = await connector(http, clock).send_batch([item_factory(1)])
    assert out == [Delivered(204)]
    req = route.calls.last.request
    ts = int(clock().timestamp())
    assert req.method == "POST"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-id"] == "idem-0001"
    assert req.headers["webhook-timestamp"] == str(ts)
    assert req.headers["webhook-signature"] == expected_sig(KEY, "idem-0001", ts, req.content)
    assert json.loads(req.content) == {
        "type": "noshow_reengage",
        "timestamp": "2025-03-04T09:30:00.000Z",
        "data": {
            "trigger_id": 101,
            "rule_id": "noshow-v1",
            "purpose": "care_coordination",
            "contact_key": "ck_0001",
            "occurred_at": "2025-03-04T09:30:00.000Z",
            "appointment_id": "appt-1",
            "clinic": "north",
        },
    }
    verify([SECRET], dict(req.headers), req.content, now=clock())


@respx.mock
async def test_thin_payload_has_only_key_name_time_link(http, clock, item_factory):
    route = respx.post(URL).mock(return_value=httpx.Response(200))
    c = connector(http, clock, thin=True, link_base="https://careloop.example.test")
    await c.send_batch([item_factory(3)])
    body = json.loads(route.calls.last.request.content)
    assert body == {
        "type": "noshow_reengage",
        "timestamp": "2025-03-04T09:30:00.000Z",
        "data": {
            "contact_key": "ck_0003",
            "occurred_at": "2025-03-04T09:30:00.000Z",
            "link": "https://careloop.example.test/api/triggers/103",
        },
    }


@respx.mock
async def test_rotation_sends_one_signature_per_secret(http, clock, item_factory):
    route = respx.post(URL).mock(return_value=httpx.Response(200))
    config = WebhookConfig(url=URL, secret_env="HOOK_SECRET, HOOK_SECRET_OLD")
    env = SecretSource({"HOOK_SECRET": SECRET, "HOOK_SECRET_OLD": OLD_SECRET})
    await WebhookConnector("hook", config, http, env, clock=clock).send_batch([item_factory()])
    req = route.calls.last.request
    ts = int(clock().timestamp())
    assert req.headers["webhook-signature"].split(" ") == [
        expected_sig(KEY, "idem-0001", ts, req.content),
        expected_sig(OLD_KEY, "idem-0001", ts, req.content),
    ]
    # A receiver that only knows the old secret still verifies.
    verify(OLD_SECRET, dict(req.headers), req.content, now=clock())


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (410, {}, Disable("HTTP 410 Gone: receiver asked to be disabled", 410)),
        (429, {"Retry-After": "7"}, Retry("HTTP 429", 7.0, 429)),
        (408, {}, Retry("HTTP 408", None, 408)),
        (503, {"Retry-After": "120"}, Retry("HTTP 503", 120.0, 503)),
        (500, {}, Retry("HTTP 500", None, 500)),
        (400, {}, Permanent("HTTP 400", 400)),
        (422, {}, Permanent("HTTP 422", 422)),
        (401, {}, AuthFailure("HTTP 401: receiver refused the signature", 401)),
        (301, {"Location": "https://elsewhere.test/"}, Permanent("HTTP 301: redirects are not followed", 301)),
    ],
)
@respx.mock
async def test_status_mapping(http, clock, item_factory, status, headers, expected):
    respx.post(URL).mock(return_value=httpx.Response(status, headers=headers))
    assert await connector(http, clock).send_batch([item_factory()]) == [expected]


@respx.mock
async def test_timeout_is_retry_without_in_call_retry(http, clock, item_factory):
    route = respx.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, Retry) and "timeout" in out.reason
    assert route.call_count == 1  # a timed-out POST may have been processed: no blind resend


@respx.mock
async def test_connection_error_retried_once_in_call(http, clock, item_factory):
    route = respx.post(URL).mock(side_effect=[httpx.ConnectError("refused"), httpx.Response(200)])
    assert await connector(http, clock).send_batch([item_factory()]) == [Delivered(200)]
    assert route.call_count == 2


@respx.mock
async def test_connection_error_twice_is_retry(http, clock, item_factory):
    route = respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    [out] = await connector(http, clock).send_batch([item_factory()])
    assert isinstance(out, Retry) and "connection" in out.reason
    assert route.call_count == 2


async def test_missing_secret_is_auth_failure(http, clock, item_factory):
    config = WebhookConfig(url=URL, secret_env="NOPE")
    [out] = await WebhookConnector("hook", config, http, SecretSource({}), clock=clock).send_batch([item_factory()])
    assert isinstance(out, AuthFailure) and "NOPE" in out.reason


def test_config_is_strict():
    with pytest.raises(ValueError):
        WebhookConfig(url=URL, secret_env="S", secret="whsec_inline")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        WebhookConfig(url=URL, secret_env="S", thin=True)
    with pytest.raises(ValueError):
        WebhookConfig(url="ftp://x", secret_env="S")


def test_sign_and_verify_spec_vector():
    # Test vector from the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, ts = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = b'{"test": 2432232314}'
    assert sign(secret, msg_id, ts, body) == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_errors(clock):
    from datetime import timedelta

    body = b"{}"
    ts = int(clock().timestamp())
    good = {"webhook-id": "m", "webhook-timestamp": str(ts), "webhook-signature": sign(SECRET, "m", ts, body)}
    assert verify(SECRET, good, body, now=clock()) == "m"
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(SECRET, good, b"{ }", now=clock())
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(SECRET, good, body, now=clock() + timedelta(seconds=301))
    with pytest.raises(WebhookVerificationError, match="too new"):
        verify(SECRET, good, body, now=clock() - timedelta(seconds=301))
    with pytest.raises(WebhookVerificationError, match="missing header webhook-id"):
        verify(SECRET, {k: v for k, v in good.items() if k != "webhook-id"}, body, now=clock())
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        verify(SECRET, {**good, "webhook-timestamp": "soon"}, body, now=clock())
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(OLD_SECRET, good, body, now=clock())
