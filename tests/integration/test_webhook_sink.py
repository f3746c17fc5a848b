"""Integration: the webhook connector against the real SinkServer on loopback (real sockets)."""
from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest

from middleware.delivery.connectors.webhook import WebhookConfig, WebhookConnector
from middleware.delivery.registry import AuthFailure, Delivered, Disable, Outbound, Retry, SecretSource
from middleware.delivery.signing import generate_secret
from middleware.delivery.sink import SinkServer

pytestmark = pytest.mark.anyio

NEW, OLD, OTHER = generate_secret(), generate_secret(), generate_secret()
ENV = SecretSource({"HOOK_NEW": NEW, "HOOK_OLD": OLD, "HOOK_OTHER": OTHER})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def item(n: int = 1, key: str | None = None) -> Outbound:
    return Outbound(
        delivery_id=n, idempotency_key=key or f"idem-{n}", destination="sink", trigger_id=500 + n,
        trigger_name="post_discharge_followup", rule_id="tcm-2bd", purpose="care_coordination",
        contact_key=f"ck_{n}", payload={"encounter_id": f"enc-{n}"},
        occurred_at=datetime(2025, 3, 4, 9, 30, tzinfo=timezone.utc),
    )


async def send(sink: SinkServer, secret_env: str, *items: Outbound, timeout_s: float = 5.0) -> list:
    config = WebhookConfig(url=sink.url + "/hooks/careloop", secret_env=secret_env, timeout_s=timeout_s)
    async with httpx.AsyncClient() as http:
        return await WebhookConnector("sink", config, http, ENV).send_batch(list(items))


async def test_signature_verified_and_listed():
    with SinkServer([NEW]) as sink:
        assert await send(sink, "HOOK_NEW", item(1)) == [Delivered(200)]
        [rec] = sink.received()
        assert rec["verified"] is True and rec["duplicate"] is False
        assert rec["webhook_id"] == "idem-1" and rec["type"] == "post_discharge_followup"
        assert rec["contact_key"] == "ck_1" and rec["trigger_id"] == 501
        listed = httpx.get(sink.url + "/received").json()
        assert listed[0]["verified"] is True


async def test_rotation_receiver_knows_only_old_secret():
    with SinkServer([OLD]) as sink:
        assert await send(sink, "HOOK_NEW,HOOK_OLD", item(2)) == [Delivered(200)]
        assert sink.received()[0]["verified"] is True


async def test_wrong_secret_rejected_as_auth_failure():
    with SinkServer([OTHER]) as sink:
        [out] = await send(sink, "HOOK_NEW", item(3))
        assert isinstance(out, AuthFailure) and out.status_code == 401
        rec = sink.received()[0]
        assert rec["verified"] is False and rec["error"] == "no matching signature"


async def test_duplicate_webhook_id_detected():
    with SinkServer([NEW]) as sink:
        await send(sink, "HOOK_NEW", item(4, key="same-key"))
        await send(sink, "HOOK_NEW", item(4, key="same-key"))
        await send(sink, "HOOK_NEW", item(5))
        assert [r["duplicate"] for r in sink.received()] == [False, True, False]
        assert sink.duplicates() == 1
        assert httpx.get(sink.url + "/stats").json() == {"total": 3, "duplicates": 1, "unverified": 0}


async def test_410_from_real_server_disables():
    with SinkServer([NEW]) as sink:
        sink.respond_with(410)
        [out] = await send(sink, "HOOK_NEW", item(6))
        assert isinstance(out, Disable) and out.status_code == 410


async def test_retry_after_from_real_server():
    with SinkServer([NEW]) as sink:
        sink.respond_with(429, {"Retry-After": "30"})
        sink.respond_with(503, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
        [first] = await send(sink, "HOOK_NEW", item(7))
        [second] = await send(sink, "HOOK_NEW", item(7))
        assert first == Retry("HTTP 429", 30.0, 429)
        assert isinstance(second, Retry) and second.after_s is not None and second.after_s > 86400
        [third] = await send(sink, "HOOK_NEW", item(7))
        assert third == Delivered(200)


async def test_closed_port_is_retry():
    with SinkServer([NEW]) as sink:
        url = sink.url
    config = WebhookConfig(url=url + "/gone", secret_env="HOOK_NEW", timeout_s=2)
    async with httpx.AsyncClient() as http:
        [out] = await WebhookConnector("sink", config, http, ENV).send_batch([item(8)])
    assert isinstance(out, Retry) and "connection" in out.reason
