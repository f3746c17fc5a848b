"""Salesforce Marketing Cloud Journey Builder: fire API entry events.

Auth: OAuth2 client credentials, ``POST https://{subdomain}.auth.marketingcloudapis.com/v2/token``
with a JSON body (grant_type, client_id, client_secret, optional account_id/scope).
The token (20 min, ``expires_in`` ≈ 1079 s) is cached until ``expires_in - token_margin_s``;
a 401 on a send refreshes it once and retries once.

One item → ``POST {rest}/interaction/v1/events`` ``{ContactKey, EventDefinitionKey, Data}`` (201).
Several → ``POST {rest}/interaction/v1/async/events`` ``{eventDefinitionKey, members:[{contactKey, data}]}``
(≤100 members); members come back in request order, with ``errorcode``/``message`` on failures.
SFMC has no idempotency key: duplicates are prevented by the worker's send ledger. An entry is
``accepted`` (201 with an ``eventInstanceId``, for which no lookup is documented), not proven entered.

Exits (issue 17): ``POST {rest}/interaction/v1/interactions/contactexit`` with up to 50
``{ContactKey, DefinitionKey, Versions?}``; it answers 202 with ``errors`` for the contacts it refuses
and works asynchronously, so each exit stays ``pending`` until
``POST …/contactexit/status`` (same body) reports "Exit process Completed." for every version.
Docs: developer.salesforce.com/docs/marketing/marketing-cloud/guide/access-token-s2s,
…/mc-apis/postEvent.htm, …/mc_rest_interaction/enterContactsIntoJourneyInBatches.html.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar

import httpx

from ...config.connectors import SfmcConfig
from ..registry import (
    AuthFailure,
    Connector,
    Delivered,
    Outbound,
    Outcome,
    ExitCheck,
    Permanent,
    RateLimit,
    Retry,
    classify_http,
    register,
    retry_after_seconds,
)
from ._common import (
    MissingSecret,
    TokenCache,
    TokenError,
    require_secret,
    safe_json,
    same_for_all,
    send_request,
    transport_outcome,
)

log = logging.getLogger("middleware.delivery.sfmc")

#: /interaction/v1/async/events accepts at most 100 members per request.
ASYNC_MAX_MEMBERS = 100
#: contactexit and contactexit/status: at most 50 contacts per request.
EXIT_MAX_CONTACTS = 50


def _vendor_rest_url(url: str) -> str | None:
    """The token response's ``rest_instance_url`` when it is an https URL on Marketing Cloud's
    domain; ``None`` otherwise, so the access token never goes to a host the response names
    elsewhere (credentials only to the configured vendor, docs/destinations.md)."""
    try:
        u = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    if u.scheme != "https" or not u.host.endswith(".marketingcloudapis.com"):
        log.warning("sfmc token response names rest_instance_url on %s: ignored", u.host,
                    extra={"action": "sfmc.rest_url_ignored"})
        return None
    return url.rstrip("/")


@register
class SfmcConnector(Connector):
    """Journey Builder entry events, single or async batch."""

    type_name = "sfmc"
    Config = SfmcConfig
    max_batch = ASYNC_MAX_MEMBERS
    max_exit_batch = EXIT_MAX_CONTACTS
    # SFMC publishes no per-second figure, only 429 (Retry-After: 5); 10 req/s is our own ceiling.
    rate_limit: ClassVar[RateLimit] = RateLimit(rate=10.0, burst=10)
    max_concurrency = 4
    native_dedup = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rest_url: str | None = None
        self.tokens = TokenCache(self._fetch_token, self.clock, self.cfg.token_margin_s)

    @property
    def cfg(self) -> SfmcConfig:
        return self.config  # type: ignore[return-value]

    @property
    def auth_url(self) -> str:
        return f"https://{self.cfg.subdomain}.auth.marketingcloudapis.com/v2/token"

    async def _fetch_token(self) -> tuple[str, float]:
        body: dict[str, Any] = {
            "grant_type": "client_credentials",
            "client_id": require_secret(self.secrets, self.cfg.client_id_env),
            "client_secret": require_secret(self.secrets, self.cfg.client_secret_env),
        }
        if self.cfg.account_id:
            body["account_id"] = self.cfg.account_id
        if self.cfg.scope:
            body["scope"] = self.cfg.scope
        resp = await send_request(self.http, "POST", self.auth_url, timeout_s=self.cfg.timeout_s, json=body)
        if resp.status_code in (400, 401, 403):
            raise TokenError(AuthFailure(f"token request refused: HTTP {resp.status_code}", resp.status_code))
        if resp.status_code != 200:
            raise TokenError(classify_http(resp))
        data = safe_json(resp)
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise TokenError(Retry("malformed token response", None, resp.status_code))
        if isinstance(data.get("rest_instance_url"), str):
            self._rest_url = _vendor_rest_url(data["rest_instance_url"]) or self._rest_url
        log.info("sfmc.token", extra={"action": "sfmc.token_fetched", "destination": self.name})
        return data["access_token"], float(data.get("expires_in") or 1079)

    def _rest_base(self) -> str:
        if self.cfg.rest_instance_url:
            return self.cfg.rest_instance_url.rstrip("/")
        return self._rest_url or f"https://{self.cfg.subdomain}.rest.marketingcloudapis.com"

    async def _post(self, path: str, body: Any) -> httpx.Response:
        """POST with the cached token; on 401 refresh once and retry once."""
        token = await self.tokens.get()
        resp = await self._post_with(token, path, body)
        if resp.status_code == 401:
            token = await self.tokens.get(force=True, stale=token)
            resp = await self._post_with(token, path, body)
        return resp

    async def _post_with(self, token: str, path: str, body: Any) -> httpx.Response:
        return await send_request(
            self.http,
            "POST",
            self._rest_base() + path,
            timeout_s=self.cfg.timeout_s,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )

    async def send_batch(self, items: list[Outbound]) -> list[Outcome]:
        if not items:
            return []
        if len(items) > ASYNC_MAX_MEMBERS:
            out: list[Outcome] = []
            for i in range(0, len(items), ASYNC_MAX_MEMBERS):
                out.extend(await self.send_batch(items[i : i + ASYNC_MAX_MEMBERS]))
            return out
        try:
            if len(items) == 1:
                result = [await self._send_single(items[0])]
            else:
                result = await self._send_async(items)
        except TokenError as exc:
            result = same_for_all(exc.outcome, len(items))
        except (httpx.TransportError, MissingSecret) as exc:
            result = same_for_all(transport_outcome(exc), len(items))
        for item, outcome in zip(items, result):
            log.info(
                "sfmc.sent",
                extra={"action": "sfmc.sent", "destination": self.name, "delivery_id": item.delivery_id,
                       "outcome": type(outcome).__name__},
            )
        return result

    async def _send_single(self, item: Outbound) -> Outcome:
        body = {
            "ContactKey": item.contact_key,
            "EventDefinitionKey": self.cfg.event_definition_key,
            "Data": dict(item.payload),
        }
        resp = await self._post("/interaction/v1/events", body)
        outcome = _classify(resp)
        if isinstance(outcome, Delivered):
            data = safe_json(resp)
            ref = data.get("eventInstanceId") if isinstance(data, dict) else None
            return Delivered(resp.status_code, "accepted (Journey Builder documents no lookup of an entry)",
                             confirmation="accepted", vendor_ref=str(ref)[:200] if ref else None)
        return outcome

    async def _send_async(self, items: list[Outbound]) -> list[Outcome]:
        body = {
            "eventDefinitionKey": self.cfg.event_definition_key,
            "members": [{"contactKey": i.contact_key, "data": dict(i.payload)} for i in items],
        }
        resp = await self._post("/interaction/v1/async/events", body)
        batch = _classify(resp)
        if not isinstance(batch, Delivered):
            return same_for_all(batch, len(items))
        data = safe_json(resp)
        members = data.get("members") if isinstance(data, dict) else None
        if not isinstance(members, list) or len(members) != len(items):
            # Accepted, but no usable per-member answer: the whole batch counts as queued.
            return same_for_all(Delivered(resp.status_code, "queued (no per-member result)", confirmation="accepted"),
                                len(items))
        out: list[Outcome] = []
        for m in members:
            if isinstance(m, dict) and m.get("errorcode"):
                out.append(Permanent(f"SFMC errorcode {m.get('errorcode')}: {m.get('message', '')}"[:300],
                                     resp.status_code))
            else:
                ref = m.get("eventInstanceId") if isinstance(m, dict) else None
                out.append(Delivered(resp.status_code, "queued", confirmation="accepted", vendor_ref=str(ref)[:200] if ref else None))
        return out

    # -- exits ------------------------------------------------------------------------------
    def build_exit(self, item: Outbound) -> dict[str, Any]:
        """One contact-exit entry: the contact and the journey's DefinitionKey (and versions); pure."""
        ex = self.exit_settings
        entry: dict[str, Any] = {"ContactKey": item.contact_key, "DefinitionKey": ex.journey_key if ex else None}
        if ex is not None and ex.versions:
            entry["Versions"] = list(ex.versions)
        return entry

    async def send_exits(self, items: list[Outbound]) -> list[Outcome]:
        out: list[Outcome] = []
        for i in range(0, len(items), EXIT_MAX_CONTACTS):
            chunk = items[i : i + EXIT_MAX_CONTACTS]
            try:
                out += await self._exit_chunk(chunk)
            except TokenError as exc:
                out += same_for_all(exc.outcome, len(chunk))
            except (httpx.TransportError, MissingSecret) as exc:
                out += same_for_all(transport_outcome(exc), len(chunk))
        for item, outcome in zip(items, out):
            log.info("sfmc.exit", extra={"action": "sfmc.exit", "destination": self.name, "delivery_id": item.delivery_id,
                                         "outcome": type(outcome).__name__})
        return out

    async def _exit_chunk(self, items: list[Outbound]) -> list[Outcome]:
        resp = await self._post("/interaction/v1/interactions/contactexit", [self.build_exit(i) for i in items])
        outcome = _classify(resp)
        if not isinstance(outcome, Delivered):
            return same_for_all(outcome, len(items))
        data = safe_json(resp)
        refused: dict[str, str] = {}
        for err in (data.get("errors") if isinstance(data, dict) else None) or []:
            if isinstance(err, dict) and err.get("contactKey") is not None:
                msgs = [str(st.get("message", "")) for st in err.get("status") or [] if isinstance(st, dict)]
                refused[str(err["contactKey"])] = "; ".join(m for m in msgs if m)[:300] or "refused"
        return [Permanent(f"Journey Builder refused the exit: {refused[i.contact_key]}", resp.status_code)
                if i.contact_key in refused else
                Delivered(resp.status_code, "exit requested (asynchronous)", confirmation="pending")
                for i in items]

    async def confirm_exits(self, items: list[Outbound]) -> list[ExitCheck]:
        """``contactexit/status``: every version "Exit process Completed." (or the contact is not in the
        journey: nothing more will be sent) -> confirmed; "received for processing" -> pending; else failed."""
        resp = await self._post("/interaction/v1/interactions/contactexit/status", [self.build_exit(i) for i in items])
        if not 200 <= resp.status_code < 300:
            return [ExitCheck("pending", f"status endpoint answered HTTP {resp.status_code}") for _ in items]
        data = safe_json(resp)
        found: dict[str, list[str]] = {}
        for entry in data if isinstance(data, list) else []:
            if isinstance(entry, dict) and entry.get("contactKey") is not None:
                found[str(entry["contactKey"])] = [str(st.get("message", "")) for st in entry.get("status") or []
                                                   if isinstance(st, dict)]
        return [_exit_state(found.get(i.contact_key)) for i in items]


def _exit_state(messages: list[str] | None) -> ExitCheck:
    if not messages:
        return ExitCheck("pending", "no status reported yet")
    low = [m.lower() for m in messages]
    if all("completed" in m or "not in" in m for m in low):
        return ExitCheck("confirmed", "; ".join(messages)[:300])
    if any("received" in m or "processing" in m or "queued" in m or "progress" in m for m in low):
        return ExitCheck("pending", "; ".join(messages)[:300])
    return ExitCheck("failed", "; ".join(messages)[:300])


def _classify(resp: httpx.Response) -> Outcome:
    """2xx ok; 429 honours Retry-After; 401 after the refresh → AuthFailure; 400 → Permanent."""
    if resp.status_code == 429:
        return Retry("HTTP 429 throttled", retry_after_seconds(resp.headers.get("Retry-After")), 429)
    outcome = classify_http(resp)
    if isinstance(outcome, Permanent):
        data = safe_json(resp)
        msg = data.get("message") if isinstance(data, dict) else None
        if msg:
            return Permanent(f"HTTP {resp.status_code}: {str(msg)[:200]}", resp.status_code)
    return outcome
