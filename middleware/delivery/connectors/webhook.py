"""Generic webhook destination, signed per Standard Webhooks v1.

Request: ``POST {url}`` with a compact JSON body
``{"type": trigger_name, "timestamp": occurred_at, "data": {...}}`` and headers
``webhook-id`` (= the idempotency key, constant across retries),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(one ``v1,`` signature per configured secret, space-separated, for rotation).

Outcomes: 2xx → Delivered; 410 → Disable; 408/429/5xx → Retry honouring
Retry-After; 401/403 → AuthFailure (the receiver refuses our signature); other
4xx and 3xx → Permanent; timeouts and connection errors → Retry.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import httpx
import orjson

from ...config.connectors import WebhookConfig
from ..registry import (
    AuthFailure,
    Connector,
    Delivered,
    Disable,
    Outbound,
    Outcome,
    Permanent,
    RateLimit,
    Retry,
    register,
    retry_after_seconds,
)
from ..signing import sign
from ._common import MissingSecret, iso_z, send_request, transport_outcome

log = logging.getLogger("middleware.delivery.webhook")


def build_body(item: Outbound, cfg: WebhookConfig) -> dict[str, Any]:
    """The JSON document sent for ``item`` (full or thin form); pure."""
    if cfg.thin:
        data: dict[str, Any] = {
            "contact_key": item.contact_key,
            "occurred_at": iso_z(item.occurred_at),
            "link": f"{(cfg.link_base or '').rstrip('/')}/api/triggers/{item.trigger_id}",
        }
    else:
        data = {
            "trigger_id": item.trigger_id,
            "rule_id": item.rule_id,
            "purpose": item.purpose,
            "contact_key": item.contact_key,
            "occurred_at": iso_z(item.occurred_at),
            **item.payload,
        }
    return {"type": item.trigger_name, "timestamp": iso_z(item.occurred_at), "data": data}


def build_exit_body(item: Outbound) -> dict[str, Any]:
    """An exit: ``type`` is the exit event's name (``careloop_exit``); ids only, never a reason; pure."""
    data = {"contact_key": item.contact_key, "occurred_at": iso_z(item.occurred_at), **item.payload}
    return {"type": item.trigger_name, "timestamp": iso_z(item.occurred_at), "data": data}


def classify_webhook(resp: httpx.Response) -> Outcome:
    """Map a receiver's answer to an outcome (see module docstring)."""
    code = resp.status_code
    if 200 <= code < 300:
        return Delivered(code)
    if code == 410:
        return Disable("HTTP 410 Gone: receiver asked to be disabled", code)
    if code in (408, 429) or code >= 500:
        return Retry(f"HTTP {code}", retry_after_seconds(resp.headers.get("Retry-After")), code)
    if code in (401, 403):
        return AuthFailure(f"HTTP {code}: receiver refused the signature", code)
    if 300 <= code < 400:
        return Permanent(f"HTTP {code}: redirects are not followed", code)
    return Permanent(f"HTTP {code}", code)


@register
class WebhookConnector(Connector):
    """POST one signed Standard Webhooks message per item."""

    type_name = "webhook"
    Config = WebhookConfig
    max_batch = 1
    rate_limit: ClassVar[RateLimit] = RateLimit(rate=20.0, burst=20)
    max_concurrency = 4
    native_dedup = False  # receivers are asked to de-duplicate on webhook-id; we keep a send ledger

    async def send_batch(self, items: list[Outbound]) -> list[Outcome]:
        return [await self.send_one(item) for item in items]

    async def send_exits(self, items: list[Outbound]) -> list[Outcome]:
        """Exits are signed like entries; ``webhook-id`` is the exit's own idempotency key."""
        return [await self.send_one(item, exit_=True) for item in items]

    def _secrets(self) -> list[str]:
        cfg: WebhookConfig = self.config  # type: ignore[assignment]
        found = [v for v in (self.secrets.get(n) for n in cfg.secret_names()) if v]
        if not found:
            raise MissingSecret(f"none of the webhook secrets {cfg.secret_env} is set")
        return found

    async def send_one(self, item: Outbound, exit_: bool = False) -> Outcome:
        """Sign and POST ``item``; never raises for HTTP or transport failures."""
        cfg: WebhookConfig = self.config  # type: ignore[assignment]
        body = orjson.dumps(build_exit_body(item) if exit_ else build_body(item, cfg))
        timestamp = int(self.clock().timestamp())
        try:
            signature = sign(self._secrets(), item.idempotency_key, timestamp, body)
        except MissingSecret as exc:
            return AuthFailure(str(exc))
        except ValueError as exc:  # a secret that is not whsec_<base64>
            return AuthFailure(f"webhook secret unusable: {exc}")
        headers = {
            "content-type": "application/json",
            "webhook-id": item.idempotency_key,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        try:
            resp = await send_request(
                self.http, "POST", cfg.url, timeout_s=cfg.timeout_s, content=body, headers=headers
            )
        except httpx.TransportError as exc:
            outcome = transport_outcome(exc)
        else:
            outcome = classify_webhook(resp)
        log.info(
            "webhook.sent",
            extra={
                "action": "webhook.sent",
                "destination": self.name,
                "delivery_id": item.delivery_id,
                "outcome": type(outcome).__name__,
                "status_code": getattr(outcome, "status_code", None),
            },
        )
        return outcome
