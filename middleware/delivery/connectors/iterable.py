"""Iterable custom events: ``/api/events/track`` and ``/api/events/trackBulk``.

One item → ``POST {base_url}/api/events/track``; several → ``POST {base_url}/api/events/trackBulk``
``{"events": [...]}``. Header ``Api-Key``. Each event: ``id`` (= our idempotency key; Iterable
updates an existing event with that id instead of adding one, ≤512 bytes), ``eventName``,
``userId`` or ``email``, ``dataFields``, ``createdAt`` (Unix seconds).
Responses: track → ``{"code": "Success", ...}`` (another code → Permanent); trackBulk →
``{"successCount", "failCount", "invalidEmails", "invalidUserIds", ...}`` (listed identities →
Permanent). 400 → Permanent, 401/403 → AuthFailure, 429/5xx → Retry (Retry-After honoured).
Docs: support.iterable.com/hc/en-us/articles/206430615 (API overview); api.iterable.com/api/docs
(events/track, events/trackBulk); trackBulk 10 req/s per project.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import httpx

from ...config.connectors import IterableConfig
from ..registry import Connector, Delivered, Outbound, Outcome, Permanent, RateLimit, classify_http, register
from ._common import finish, MissingSecret, chunks, require_secret, safe_json, same_for_all, send_request, transport_outcome

log = logging.getLogger("middleware.delivery.iterable")

MAX_ID_BYTES = 512
#: Events per trackBulk request: our own ceiling (no published figure found).
BULK_MAX_EVENTS = 100


@register
class IterableConnector(Connector):
    """Iterable events keyed by our idempotency key (native de-dup)."""

    type_name = "iterable"
    Config = IterableConfig
    max_batch = BULK_MAX_EVENTS
    # trackBulk: 10 req/s per project (the single-event limit is unpublished; same ceiling).
    rate_limit: ClassVar[RateLimit] = RateLimit(rate=10.0, burst=10)
    max_concurrency = 2
    native_dedup = True  # `id`
    max_exit_batch = BULK_MAX_EVENTS

    @property
    def cfg(self) -> IterableConfig:
        return self.config  # type: ignore[return-value]

    def _identity_value(self, item: Outbound) -> str | None:
        src = self.cfg.identity_source
        value = item.contact_key if src == "contact_key" else item.payload.get(src)
        return str(value) if value not in (None, "") else None

    def build_event(self, item: Outbound) -> dict[str, Any]:
        """The Iterable event object for ``item``; pure."""
        event: dict[str, Any] = {
            "id": item.idempotency_key,
            "eventName": self.cfg.event_name or item.trigger_name,
            self.cfg.identity: self._identity_value(item),
            "dataFields": {k: v for k, v in item.payload.items() if k != self.cfg.identity_source},
            "createdAt": int(item.occurred_at.timestamp()),
        }
        if self.cfg.campaign_id is not None:
            event["campaignId"] = self.cfg.campaign_id
        if self.cfg.template_id is not None:
            event["templateId"] = self.cfg.template_id
        return event

    def build_exit(self, item: Outbound) -> dict[str, Any]:
        """The exit event: the exit event's name, ids only, ``id`` = the exit's idempotency key (Iterable
        de-duplicates on it, as for entries); no campaign or template; pure."""
        return {"id": item.idempotency_key, "eventName": item.trigger_name, self.cfg.identity: item.contact_key,
                "dataFields": dict(item.payload), "createdAt": int(item.occurred_at.timestamp())}

    async def send_exits(self, items: list[Outbound]) -> list[Outcome]:
        if self.cfg.identity_source != "contact_key":
            return same_for_all(Permanent("Iterable exits need identity_source: contact_key (an exit carries ids only)"),
                                len(items))
        return await self._send_events(items, self.build_exit, "iterable.exit")

    async def send_batch(self, items: list[Outbound]) -> list[Outcome]:
        return await self._send_events(items, self.build_event, "iterable.sent")

    async def _send_events(self, items: list[Outbound], build: Any, action: str) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        ready: list[int] = []
        for idx, item in enumerate(items):
            if self._identity_value(item) is None:
                results[idx] = Permanent(f"no {self.cfg.identity} for the contact")
            elif len(item.idempotency_key.encode("utf-8")) > MAX_ID_BYTES:
                results[idx] = Permanent(f"idempotency key longer than Iterable's {MAX_ID_BYTES}-byte id")
            else:
                ready.append(idx)
        for idxs in chunks(ready, BULK_MAX_EVENTS):
            chunk = [items[i] for i in idxs]
            try:
                outs = await (self._track(chunk[0], build) if len(chunk) == 1 else self._bulk(chunk, build))
            except (httpx.TransportError, MissingSecret) as exc:
                outs = same_for_all(transport_outcome(exc), len(chunk))
            for i, o in zip(idxs, outs):
                results[i] = o
        return finish(items, results, logger=log, action=action, destination=self.name)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        key = require_secret(self.secrets, self.cfg.api_key_env)
        return await send_request(
            self.http, "POST", self.cfg.base_url.rstrip("/") + path, timeout_s=self.cfg.timeout_s,
            json=body, headers={"Api-Key": key},
        )

    async def _track(self, item: Outbound, build: Any) -> list[Outcome]:
        resp = await self._post("/api/events/track", build(item))
        outcome = _classify(resp)
        if isinstance(outcome, Delivered):
            data = safe_json(resp)
            code = data.get("code") if isinstance(data, dict) else None
            if code not in (None, "Success"):
                outcome = Permanent(f"Iterable code {str(code)[:80]}", resp.status_code)
        return [outcome]

    async def _bulk(self, items: list[Outbound], build: Any) -> list[Outcome]:
        resp = await self._post("/api/events/trackBulk", {"events": [build(i) for i in items]})
        batch = _classify(resp)
        if not isinstance(batch, Delivered):
            return same_for_all(batch, len(items))
        data = safe_json(resp)
        if not isinstance(data, dict):
            return same_for_all(batch, len(items))
        bad = {str(x) for x in (data.get("invalidEmails") or []) + (data.get("invalidUserIds") or [])}
        return [
            Permanent(f"Iterable rejected the {self.cfg.identity}", resp.status_code)
            if self._identity_value(i) in bad else Delivered(resp.status_code)
            for i in items
        ]


def _classify(resp: httpx.Response) -> Outcome:
    outcome = classify_http(resp)
    if isinstance(outcome, Permanent):
        data = safe_json(resp)
        code = data.get("code") if isinstance(data, dict) else None
        if code:
            return Permanent(f"HTTP {resp.status_code}: Iterable code {str(code)[:80]}", resp.status_code)
    return outcome
