"""Braze: custom events via ``/users/track`` or API-triggered Canvas entry via ``/canvas/trigger/send``.

Track: ``POST {rest_endpoint}/users/track`` ``{"events": [{external_id, name, time, properties}]}``;
≤75 events per request. A success may carry non-fatal ``errors`` (``{"type", "input_array", "index"}``):
the indexed events are Permanent, the rest Delivered.
Canvas: ``POST {rest_endpoint}/canvas/trigger/send`` ``{"canvas_id", "recipients": [{external_user_id,
canvas_entry_properties}]}``; ≤50 recipients; no per-recipient result (a failure applies to all).
Auth: ``Authorization: Bearer <REST API key>`` (static: 401/403 → AuthFailure). 429 → Retry after
Retry-After or ``X-RateLimit-Reset``. Braze has no idempotency key: the worker's send ledger applies.
Docs: braze.com/docs/api/endpoints/user_data/post_user_track/; braze.com/docs/api/objects_filters/event_object;
braze.com/docs/api/endpoints/messaging/send_messages/post_send_triggered_canvases/; braze.com/docs/api/errors;
braze.com/docs/api/api_limits.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, ClassVar

import httpx

from ...config.connectors import BrazeConfig
from ..registry import (
    Connector,
    Delivered,
    Outbound,
    Outcome,
    Permanent,
    RateLimit,
    Retry,
    classify_http,
    register,
    retry_after_seconds,
)
from ._common import finish, MissingSecret, chunks, iso_z, require_secret, safe_json, same_for_all, send_request, transport_outcome

log = logging.getLogger("middleware.delivery.braze")

#: /users/track: at most 75 event objects per request.
TRACK_MAX_EVENTS = 75
#: /canvas/trigger/send: at most 50 recipients per request.
CANVAS_MAX_RECIPIENTS = 50


def rate_limited(resp: httpx.Response, now: datetime) -> Retry:
    """Retry for a Braze 429: Retry-After, else X-RateLimit-Reset (epoch seconds), else backoff."""
    after = retry_after_seconds(resp.headers.get("Retry-After"), now)
    if after is None:
        try:
            after = max(0.0, float(resp.headers["X-RateLimit-Reset"]) - now.timestamp())
        except (KeyError, ValueError):
            after = None
    return Retry("HTTP 429 rate limited", after, 429)


@register
class BrazeConnector(Connector):
    """Braze events or Canvas triggers for pseudonymous external ids."""

    type_name = "braze"
    Config = BrazeConfig
    max_batch = TRACK_MAX_EVENTS  # canvas mode splits into requests of 50
    # /users/track allows 3,000 req/3 s; trigger sends share 250,000/h (≈69/s) → 50 req/s for both.
    rate_limit: ClassVar[RateLimit] = RateLimit(rate=50.0, burst=50)
    max_concurrency = 4
    native_dedup = False
    max_exit_batch = TRACK_MAX_EVENTS

    @property
    def cfg(self) -> BrazeConfig:
        return self.config  # type: ignore[return-value]

    def _external_id(self, item: Outbound) -> str | None:
        src = self.cfg.external_id_source
        value = item.contact_key if src == "contact_key" else item.payload.get(src)
        return str(value) if value not in (None, "") else None

    def _properties(self, item: Outbound) -> dict[str, Any]:
        return {k: v for k, v in item.payload.items() if k != self.cfg.external_id_source}

    def build_event(self, item: Outbound) -> dict[str, Any]:
        """A Braze event object for ``item``; pure."""
        return {
            "external_id": self._external_id(item),
            "name": self.cfg.event_name or item.trigger_name,
            "time": iso_z(item.occurred_at),
            "properties": self._properties(item),
        }

    def build_exit_event(self, item: Outbound) -> dict[str, Any]:
        """The exit as a custom event (the Canvas names it as an exception event, so the user leaves at
        once): the exit event's name and ids only; pure."""
        return {"external_id": item.contact_key, "name": item.trigger_name, "time": iso_z(item.occurred_at),
                "properties": dict(item.payload)}

    def build_recipient(self, item: Outbound) -> dict[str, Any]:
        """A Canvas recipient object for ``item``; pure."""
        return {"external_user_id": self._external_id(item), "canvas_entry_properties": self._properties(item)}

    async def send_batch(self, items: list[Outbound]) -> list[Outcome]:
        size = TRACK_MAX_EVENTS if self.cfg.mode == "track" else CANVAS_MAX_RECIPIENTS
        results: list[Outcome | None] = [None] * len(items)
        ready = []
        for idx, item in enumerate(items):
            if self._external_id(item) is None:
                results[idx] = Permanent("no external_id for the contact")
            else:
                ready.append(idx)
        for idxs in chunks(ready, size):
            chunk = [items[i] for i in idxs]
            try:
                outs = await (self._track(chunk) if self.cfg.mode == "track" else self._canvas(chunk))
            except (httpx.TransportError, MissingSecret) as exc:
                outs = same_for_all(transport_outcome(exc), len(chunk))
            for i, o in zip(idxs, outs):
                results[i] = o
        return finish(items, results, logger=log, action="braze.sent", destination=self.name)

    async def send_exits(self, items: list[Outbound]) -> list[Outcome]:
        """Exits go to ``/users/track`` in either mode (a Canvas exits on its exception event)."""
        if self.cfg.external_id_source != "contact_key":
            return same_for_all(Permanent("Braze exits need external_id_source: contact_key (an exit carries ids only)"),
                                len(items))
        results: list[Outcome | None] = [None] * len(items)
        for idxs in chunks(list(range(len(items))), TRACK_MAX_EVENTS):
            chunk = [items[i] for i in idxs]
            try:
                outs = await self._track(chunk, self.build_exit_event)
            except (httpx.TransportError, MissingSecret) as exc:
                outs = same_for_all(transport_outcome(exc), len(chunk))
            for i, o in zip(idxs, outs):
                results[i] = o
        return finish(items, results, logger=log, action="braze.exit", destination=self.name)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        key = require_secret(self.secrets, self.cfg.api_key_env)
        return await send_request(
            self.http, "POST", self.cfg.rest_endpoint.rstrip("/") + path, timeout_s=self.cfg.timeout_s,
            json=body, headers={"Authorization": f"Bearer {key}"},
        )

    async def _track(self, items: list[Outbound], build: Any = None) -> list[Outcome]:
        resp = await self._post("/users/track", {"events": [(build or self.build_event)(i) for i in items]})
        batch = self._classify(resp)
        if not isinstance(batch, Delivered):
            return same_for_all(batch, len(items))
        data = safe_json(resp)
        out: list[Outcome] = [Delivered(resp.status_code) for _ in items]
        if isinstance(data, dict) and data.get("message") not in (None, "success"):
            return same_for_all(Permanent(f"Braze: {str(data.get('message'))[:200]}", resp.status_code), len(items))
        errors = data.get("errors") if isinstance(data, dict) else None
        for err in errors if isinstance(errors, list) else []:
            if not isinstance(err, dict):
                continue
            idx = err.get("index")
            if err.get("input_array", "events") == "events" and isinstance(idx, int) and 0 <= idx < len(items):
                out[idx] = Permanent(f"Braze: {str(err.get('type', 'invalid event'))[:200]}", resp.status_code)
        return out

    async def _canvas(self, items: list[Outbound]) -> list[Outcome]:
        body = {"canvas_id": self.cfg.canvas_id, "recipients": [self.build_recipient(i) for i in items]}
        resp = await self._post("/canvas/trigger/send", body)
        return same_for_all(self._classify(resp), len(items))

    def _classify(self, resp: httpx.Response) -> Outcome:
        if resp.status_code == 429:
            return rate_limited(resp, self.clock())
        outcome = classify_http(resp)
        if isinstance(outcome, Permanent):
            data = safe_json(resp)
            msg = data.get("message") if isinstance(data, dict) else None
            if msg:
                return Permanent(f"HTTP {resp.status_code}: {str(msg)[:200]}", resp.status_code)
        return outcome
