"""Segment HTTP Tracking API: ``track`` or ``identify`` calls, batched through ``/v1/batch``.

One message → ``POST {endpoint}/v1/track`` (or ``/v1/identify``); several → ``POST {endpoint}/v1/batch``
``{"batch": [...]}``. Basic auth with the write key as username and an empty password.
``messageId`` = our idempotency key (Segment de-duplicates on it, best effort, ~24 h).

Segment answers 200 even when it drops an event, so everything is validated BEFORE sending:
≤32 KB per event, ≤500 KB and ≤2,500 events per batch, ``userId`` or ``anonymousId`` present,
``event`` name present for track. An invalid item is Permanent with the reason; a batch that would
exceed 500 KB is split. 400 → Permanent, 401/403 → AuthFailure, 429/5xx → Retry.
Docs: twilio.com/docs/segment/connections/sources/catalog/libraries/server/http-api;
twilio.com/docs/segment/guides/duplicate-data; segment-docs PR #6966 (errors section).
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import httpx
import orjson

from ...config.connectors import SegmentConfig
from ..registry import Connector, Delivered, Outbound, Outcome, Permanent, RateLimit, classify_http, register
from ._common import finish, MissingSecret, iso_z, require_secret, same_for_all, send_request, transport_outcome

log = logging.getLogger("middleware.delivery.segment")

MAX_EVENT_BYTES = 32 * 1024  # 32 KB per event
MAX_BATCH_BYTES = 500 * 1024  # 500 KB per /v1/batch request
MAX_BATCH_EVENTS = 2500
#: Room for the ``{"batch":[`` … ``],"sentAt":"…"}`` envelope around the messages.
ENVELOPE_BYTES = 64


def validate_message(msg: dict[str, Any]) -> str | None:
    """Why Segment would drop ``msg`` (size, identity, event name), or ``None``; pure."""
    if not (msg.get("userId") or msg.get("anonymousId")):
        return "Segment requires userId or anonymousId"
    if msg.get("type") == "track" and not msg.get("event"):
        return "Segment track requires an event name"
    size = len(orjson.dumps(msg))
    if size > MAX_EVENT_BYTES:
        return f"event is {size} bytes; Segment allows {MAX_EVENT_BYTES} (32 KB)"
    return None


def pack_batches(sizes: list[int]) -> list[list[int]]:
    """Group item indexes so each batch stays ≤500 KB and ≤2,500 events; pure."""
    groups: list[list[int]] = []
    current: list[int] = []
    used = ENVELOPE_BYTES
    for idx, size in enumerate(sizes):
        if current and (used + size + 1 > MAX_BATCH_BYTES or len(current) >= MAX_BATCH_EVENTS):
            groups.append(current)
            current, used = [], ENVELOPE_BYTES
        current.append(idx)
        used += size + 1
    if current:
        groups.append(current)
    return groups


@register
class SegmentConnector(Connector):
    """Track/identify with pre-send validation (Segment never says no)."""

    type_name = "segment"
    Config = SegmentConfig
    max_batch = MAX_BATCH_EVENTS
    # Segment may queue above 1,000 events/s per workspace; 20 req/s of batches stays far below.
    rate_limit: ClassVar[RateLimit] = RateLimit(rate=20.0, burst=20)
    max_concurrency = 4
    native_dedup = True  # messageId
    max_exit_batch = MAX_BATCH_EVENTS

    @property
    def cfg(self) -> SegmentConfig:
        return self.config  # type: ignore[return-value]

    def build_message(self, item: Outbound) -> dict[str, Any]:
        """The Segment message for ``item``; pure."""
        msg: dict[str, Any] = {"type": self.cfg.call, self.cfg.identity: item.contact_key}
        if self.cfg.call == "track":
            msg["event"] = self.cfg.event_name or item.trigger_name
            msg["properties"] = dict(item.payload)
        else:
            msg["traits"] = dict(item.payload)
        msg["timestamp"] = iso_z(item.occurred_at)
        msg["messageId"] = item.idempotency_key
        return msg

    def build_exit(self, item: Outbound) -> dict[str, Any]:
        """The exit as a ``track`` call (whatever ``call`` entries use): the exit event's name, ids only,
        ``messageId`` = the exit's idempotency key (the same scheme as entries); pure."""
        return {"type": "track", self.cfg.identity: item.contact_key, "event": item.trigger_name,
                "properties": dict(item.payload), "timestamp": iso_z(item.occurred_at), "messageId": item.idempotency_key}

    async def send_batch(self, items: list[Outbound]) -> list[Outcome]:
        return await self._validated(items, self.build_message, self.cfg.call)

    async def send_exits(self, items: list[Outbound]) -> list[Outcome]:
        return await self._validated(items, self.build_exit, "track")

    async def _validated(self, items: list[Outbound], build: Any, call: str) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        valid: list[int] = []
        messages: list[dict[str, Any]] = []
        for idx, item in enumerate(items):
            msg = build(item)
            reason = validate_message(msg)
            if reason:
                results[idx] = Permanent(reason)
            else:
                valid.append(idx)
                messages.append(msg)
        sizes = [len(orjson.dumps(m)) for m in messages]
        for group in pack_batches(sizes):
            idxs = [valid[g] for g in group]
            outs = await self._send([messages[g] for g in group], call)
            for i, o in zip(idxs, outs):
                results[i] = o
        return finish(items, results, logger=log, action="segment.sent", destination=self.name)

    async def _send(self, messages: list[dict[str, Any]], call: str) -> list[Outcome]:
        base = self.cfg.endpoint.rstrip("/")
        sent_at = iso_z(self.clock())
        if len(messages) == 1:
            url, body = f"{base}/v1/{call}", {**messages[0], "sentAt": sent_at}
        else:
            url, body = f"{base}/v1/batch", {"batch": messages, "sentAt": sent_at}
        try:
            key = require_secret(self.secrets, self.cfg.write_key_env)
            resp = await send_request(
                self.http, "POST", url, timeout_s=self.cfg.timeout_s,
                content=orjson.dumps(body), headers={"Content-Type": "application/json"},
                auth=httpx.BasicAuth(key, ""),
            )
        except (httpx.TransportError, MissingSecret) as exc:
            return same_for_all(transport_outcome(exc), len(messages))
        outcome = classify_http(resp)
        if isinstance(outcome, Delivered):
            outcome = Delivered(resp.status_code, "accepted (Segment validates asynchronously)")
        return same_for_all(outcome, len(messages))
