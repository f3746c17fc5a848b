"""HubSpot custom behavioural events (event completions), with an optional contact upsert.

Send: ``POST https://api.hubapi.com/events/v3/send`` (204) with ``eventName`` (``pe{HubID}_{name}``),
one of ``email``/``objectId``/``utk``, ``occurredAt``, ``properties`` and ``uuid``; several items go to
``/events/v3/send/batch`` as ``{"inputs": [...]}`` (no per-item result: a failure applies to all).
Upsert (when ``upsert_contact``): ``POST /crm/v3/objects/contacts/batch/upsert``
``{"inputs": [{"id", "idProperty", "properties"}]}`` before the events.

Auth: a private-app token (static: 401/403 → AuthFailure) or OAuth refresh-token flow
(``POST /oauth/v1/token``, form-encoded; tokens cached for ``expires_in`` minus a margin; a 401
refreshes once and retries once). 429: Retry-After if sent, else the 10-second window
(``X-HubSpot-RateLimit-Interval-Milliseconds``); a DAILY policy waits an hour.
Limits checked before sending: ≤50 properties, string values ≤50 chars (URL/referrer ≤200).
Docs: developers.hubspot.com/docs/api-reference/legacy/events/send-event-data/guide;
…/changelog/new-property-limits-for-the-custom-behavioural-events-api;
…/legacy/crm/objects/contacts/batch/upsert-contacts; …/changelog/increasing-our-api-limits.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any, ClassVar

import httpx

from ...config.connectors import HUBSPOT_API, HubSpotConfig
from ..registry import (
    AuthFailure,
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
from ._common import (
    finish,
    MissingSecret,
    TokenCache,
    TokenError,
    iso_z,
    require_secret,
    safe_json,
    same_for_all,
    send_request,
    transport_outcome,
)

log = logging.getLogger("middleware.delivery.hubspot")

API = HUBSPOT_API
MAX_PROPERTIES = 50
MAX_VALUE_CHARS = 50
MAX_URL_VALUE_CHARS = 200
#: Batch size we use for /events/v3/send/batch and contacts batch/upsert (v3 cap assumed 100).
BATCH_MAX = 100
#: Default wait after a 429 without Retry-After: the 10-second rolling window (10,000 ms).
DEFAULT_WINDOW_S = 10.0
#: A DAILY-policy 429 will not clear in seconds; come back in an hour (3,600 s).
DAILY_LIMIT_WAIT_S = 3600.0
#: Namespace for the deterministic event uuid derived from our idempotency key.
UUID_NAMESPACE = uuid.UUID("6f1c1b8e-5a1d-4f5e-9d7c-2b9c4a0e7c11")


def event_uuid(idempotency_key: str) -> str:
    """The deterministic ``uuid`` sent with an event (same key → same uuid)."""
    return str(uuid.uuid5(UUID_NAMESPACE, idempotency_key))


def validate_properties(props: dict[str, Any]) -> str | None:
    """The reason ``props`` break HubSpot's event-property limits, or ``None``; pure."""
    if len(props) > MAX_PROPERTIES:
        return f"{len(props)} properties; HubSpot allows at most {MAX_PROPERTIES}"
    for key, value in props.items():
        if isinstance(value, str):
            limit = MAX_URL_VALUE_CHARS if ("url" in key.lower() or "referrer" in key.lower()) else MAX_VALUE_CHARS
            if len(value) > limit:
                return f"property {key!r} is {len(value)} chars; HubSpot allows {limit}"
    return None


def rate_limited(resp: httpx.Response) -> Retry:
    """Retry for a HubSpot 429 with the right wait (Retry-After, policy, or the 10 s window)."""
    after = retry_after_seconds(resp.headers.get("Retry-After"))
    data = safe_json(resp)
    policy = data.get("policyName") if isinstance(data, dict) else None
    if after is None and policy == "DAILY":
        after = DAILY_LIMIT_WAIT_S
    if after is None:
        try:
            after = float(resp.headers["X-HubSpot-RateLimit-Interval-Milliseconds"]) / 1000.0
        except (KeyError, ValueError):
            after = DEFAULT_WINDOW_S
    return Retry(f"HTTP 429 rate limited ({policy or 'window'})", after, 429)


@register
class HubSpotConnector(Connector):
    """Custom event completions, single or batch, optionally after a contact upsert."""

    type_name = "hubspot"
    Config = HubSpotConfig
    max_batch = BATCH_MAX
    # Private apps: 190 req/10 s on Pro/Enterprise, 100/10 s on Free/Starter → 10 req/s is safe for all.
    rate_limit: ClassVar[RateLimit] = RateLimit(rate=10.0, burst=10)
    max_concurrency = 4
    native_dedup = False  # `uuid` de-dup semantics are undocumented: keep the send ledger
    max_exit_batch = BATCH_MAX

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refresh_token: str | None = None
        self.tokens = TokenCache(self._refresh, self.clock, self.cfg.token_margin_s)

    @property
    def cfg(self) -> HubSpotConfig:
        return self.config  # type: ignore[return-value]

    async def _refresh(self) -> tuple[str, float]:
        cfg = self.cfg
        form = {
            "grant_type": "refresh_token",
            "client_id": require_secret(self.secrets, cfg.client_id_env or ""),
            "client_secret": require_secret(self.secrets, cfg.client_secret_env or ""),
            "refresh_token": self._refresh_token or require_secret(self.secrets, cfg.refresh_token_env or ""),
        }
        resp = await send_request(self.http, "POST", cfg.token_url, timeout_s=cfg.timeout_s, data=form)
        if resp.status_code in (400, 401, 403):
            raise TokenError(AuthFailure(f"OAuth refresh refused: HTTP {resp.status_code}", resp.status_code))
        if resp.status_code != 200:
            raise TokenError(rate_limited(resp) if resp.status_code == 429 else classify_http(resp))
        data = safe_json(resp)
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise TokenError(Retry("malformed OAuth token response", None, resp.status_code))
        if isinstance(data.get("refresh_token"), str):
            self._refresh_token = data["refresh_token"]
        log.info("hubspot.token", extra={"action": "hubspot.token_refreshed", "destination": self.name})
        return data["access_token"], float(data.get("expires_in") or 1800)

    async def _token(self) -> str:
        if self.cfg.auth == "private_app":
            return require_secret(self.secrets, self.cfg.access_token_env or "")
        return await self.tokens.get()

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        token = await self._token()
        resp = await self._post_with(token, path, body)
        if resp.status_code == 401 and self.cfg.auth == "oauth":
            token = await self.tokens.get(force=True, stale=token)
            resp = await self._post_with(token, path, body)
        return resp

    async def _post_with(self, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return await send_request(
            self.http, "POST", API + path, timeout_s=self.cfg.timeout_s, json=body,
            headers={"Authorization": f"Bearer {token}"},
        )

    def _identity_value(self, item: Outbound) -> str | None:
        src = self.cfg.identity_source
        value = item.contact_key if src == "contact_key" else item.payload.get(src)
        return str(value) if value not in (None, "") else None

    def build_event(self, item: Outbound) -> dict[str, Any]:
        """The event-completion object for ``item``; pure."""
        skip = {self.cfg.identity_source, *self.cfg.contact_properties}
        props = {k: v for k, v in item.payload.items() if k not in skip}
        return {
            "eventName": self.cfg.event_name,
            self.cfg.identity: self._identity_value(item),
            "occurredAt": iso_z(item.occurred_at),
            "properties": props,
            "uuid": event_uuid(item.idempotency_key),
        }

    async def send_batch(self, items: list[Outbound]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        ready: list[int] = []
        events: list[dict[str, Any]] = []
        for idx, item in enumerate(items):
            event = self.build_event(item)
            reason = None if event[self.cfg.identity] else f"no {self.cfg.identity} for the contact"
            reason = reason or validate_properties(event["properties"])
            if reason:
                results[idx] = Permanent(reason)
            else:
                ready.append(idx)
                events.append(event)
        for start in range(0, len(ready), BATCH_MAX):
            idxs = ready[start : start + BATCH_MAX]
            outs = await self._send_chunk([items[i] for i in idxs], events[start : start + BATCH_MAX])
            for i, o in zip(idxs, outs):
                results[i] = o
        return finish(items, results, logger=log, action="hubspot.sent", destination=self.name)

    async def _send_chunk(self, items: list[Outbound], events: list[dict[str, Any]]) -> list[Outcome]:
        try:
            if self.cfg.upsert_contact:
                upsert = await self._upsert(items)
                if not isinstance(upsert, Delivered):
                    return same_for_all(upsert, len(items))
            if len(events) == 1:
                resp = await self._post("/events/v3/send", events[0])
            else:
                resp = await self._post("/events/v3/send/batch", {"inputs": events})
            return same_for_all(_classify(resp), len(items))
        except TokenError as exc:
            return same_for_all(exc.outcome, len(items))
        except (httpx.TransportError, MissingSecret) as exc:
            return same_for_all(transport_outcome(exc), len(items))

    def build_exit(self, item: Outbound) -> dict[str, Any]:
        """The exit as a contact update: the configured property (the workflow's unenrollment criterion)
        set to the exit time in epoch milliseconds, for the contact the entries identified; pure."""
        prop = self.exit_settings.property if self.exit_settings is not None else None
        entry: dict[str, Any] = {"id": item.contact_key,
                                 "properties": {prop or "careloop_exit": str(int(item.occurred_at.timestamp() * 1000))}}
        if self.cfg.identity == "email":
            entry["idProperty"] = "email"
        return entry

    async def send_exits(self, items: list[Outbound]) -> list[Outcome]:
        """``POST /crm/v3/objects/contacts/batch/update``; a 207 names the inputs that failed."""
        if self.cfg.identity == "utk" or self.cfg.identity_source != "contact_key":
            return same_for_all(Permanent("HubSpot exits need identity objectId or email from the contact key"), len(items))
        results: list[Outcome] = []
        for start in range(0, len(items), BATCH_MAX):
            chunk = items[start : start + BATCH_MAX]
            try:
                resp = await self._post("/crm/v3/objects/contacts/batch/update", {"inputs": [self.build_exit(i) for i in chunk]})
            except TokenError as exc:
                results += same_for_all(exc.outcome, len(chunk))
                continue
            except (httpx.TransportError, MissingSecret) as exc:
                results += same_for_all(transport_outcome(exc), len(chunk))
                continue
            if resp.status_code == 207:
                failed: dict[str, str] = {}
                data = safe_json(resp)
                for err in (data.get("errors") if isinstance(data, dict) else None) or []:
                    if isinstance(err, dict):
                        for i in ((err.get("context") or {}).get("ids") or []):
                            failed[str(i)] = str(err.get("category") or "error")[:80]
                results += [Permanent(f"HubSpot: {failed[i.contact_key]}", 207) if i.contact_key in failed
                            else Delivered(207) for i in chunk]
            else:
                results += same_for_all(_classify(resp), len(chunk))
        return finish(items, list(results), logger=log, action="hubspot.exit", destination=self.name)

    async def _upsert(self, items: list[Outbound]) -> Outcome:
        inputs = [
            {
                "id": self._identity_value(i),
                "idProperty": self.cfg.upsert_id_property,
                "properties": {k: i.payload[k] for k in self.cfg.contact_properties if k in i.payload},
            }
            for i in items
        ]
        resp = await self._post("/crm/v3/objects/contacts/batch/upsert", {"inputs": inputs})
        return _classify(resp)


def _classify(resp: httpx.Response) -> Outcome:
    if resp.status_code == 429:
        return rate_limited(resp)
    outcome = classify_http(resp)  # 401 here is after the one refresh → AuthFailure
    if isinstance(outcome, Permanent):
        data = safe_json(resp)
        # Only the error category: HubSpot messages can echo property values (possible PHI).
        category = data.get("category") if isinstance(data, dict) else None
        if category:
            return Permanent(f"HTTP {resp.status_code}: {str(category)[:80]}", resp.status_code)
    return outcome
