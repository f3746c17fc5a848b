"""FHIR subscription endpoints, one base per source: ``/fhir/{source}``.

* ``PUT /fhir/{source}/{Type}/{id}``: rest-hook with payload (HAPI's ``update()``); answers
  like a FHIR server: 201 for version 1, else 200, echoing the resource.
* ``DELETE /fhir/{source}/{Type}/{id}``: HAPI's send-delete-messages; 200 + OperationOutcome.
* ``POST /fhir/{source}``: a topic notification Bundle (R4 backport, R4B, R5), answered with a
  ``transaction-response`` Bundle (HAPI resends anything else), or an empty
  body (payload-less rest-hook: sweep every type). A single resource is accepted as a create.
* ``POST /fhir/{source}/{Type}``: payload-less rest-hook naming the type to sweep.

Every accepted call is stored in the inbox (``channel="fhir"``, request facts in ``meta``)
and committed before the 2xx. Bad bodies answer 4xx with an OperationOutcome and are kept
with status ``failed``. Authentication: the token in the source's environment variable,
as ``Authorization: Bearer <token>`` or ``X-Careloop-Token: <token>``, compared in constant
time; a source without a token accepts loopback callers only. Bodies are never logged.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response

from ..config.sources import Source
from ..normalize.fhir_notification import NotificationError, is_notification, parse_notification
from ..storage.inbox import InboundRecord
from ..settings import api_token_map
from .authn import authentication_failed, refuse_if_throttled
from .body import CLOSE, read_capped
from .refusals import FHIR_LIMIT_SETTING

log = logging.getLogger("careloop.fhir.http")
router = APIRouter()

FHIR_JSON = "application/fhir+json"
EXTRA_TYPES = ("Patient",)  # accepted besides the source's resource_types (patient identity)
SUBSCRIPTION_HEADERS = ("x-careloop-subscription", "x-subscription-id", "x-subscription")
LOOPBACK = ("127.", "::1", "localhost")


def outcome(code: str, text: str, severity: str = "error") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": text}]}


def notification_ack(ntype: str) -> dict[str, Any]:
    """The answer to a topic notification: a ``transaction-response`` Bundle (its one entry's
    ``response.outcome`` says what was received).

    HAPI delivers a topic notification Bundle as a FHIR transaction and parses the answer as a
    Bundle; anything else (an OperationOutcome, an empty body) counts as a failed delivery and is
    sent again every ~2 s (HAPI 8.8, measured: 19 copies of one event in 15 s). A Bundle stops that.
    """
    return {"resourceType": "Bundle", "type": "transaction-response",
            "entry": [{"response": {"status": "200 OK",
                                    "outcome": outcome("informational", f"{ntype} received", "information")}}]}


def _fhir(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(content=content, status_code=status, media_type=FHIR_JSON, headers=headers)


def _credentials(request: Request) -> list[str]:
    given = []
    auth = request.headers.get("authorization", "")
    if auth:
        given.append(auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip())
    if h := request.headers.get("x-careloop-token"):
        given.append(h.strip())
    return given


def _any_matches(given: list[str], tokens: list[str]) -> bool:
    ok = False
    for g in given:  # compare every candidate so timing does not reveal which matched
        for token in tokens:
            ok = hmac.compare_digest(g.encode(), token.encode()) or ok
    return ok


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    return host.startswith(LOOPBACK)


def _authorized(request: Request, source: Source) -> bool:
    token = os.environ.get(source.notification_token_env())
    if not token:
        return _is_loopback(request)
    return _any_matches(_credentials(request), [token])


def _known_caller(request: Request) -> bool:
    """For an unknown source: does the caller hold any FHIR source token or API token?
    Without any credential, only a loopback caller of a token-less (development) setup."""
    rt = request.app.state.runtime
    tokens = [t for src in rt.sources.items if (t := os.environ.get(src.notification_token_env()))]
    tokens += list(api_token_map(rt.settings).values())
    given = _credentials(request)
    if given and tokens:
        return _any_matches(given, tokens)
    return not tokens and _is_loopback(request)


def _meta(request: Request, kind: str, **extra: Any) -> dict[str, Any]:
    """Facts about the request: names of headers only, plus the subscription id if sent."""
    sub = next((request.headers[h] for h in SUBSCRIPTION_HEADERS if h in request.headers), None)
    ua = request.headers.get("user-agent", "")
    meta: dict[str, Any] = {
        "kind": kind, "method": request.method, "path": request.url.path,
        "header_names": sorted({k.lower() for k in request.headers.keys()}),
        "client": "hapi" if "HAPI" in ua.upper() else None, "arrival": "notification",
    }
    if sub:
        meta["subscription"] = sub[:200]
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


async def _store(request: Request, source: Source, raw: bytes, meta: dict[str, Any], *, status: str = "received",
                 error: str | None = None, dedup_key: str | None = None) -> bool:
    rt = request.app.state.runtime
    rec = InboundRecord(
        source=source.name, channel="fhir", raw=raw, sha256=hashlib.sha256(raw).hexdigest(), status=status,
        error=error, dedup_key=dedup_key, message_type=f"{meta['kind']}:{meta.get('resource_type') or ''}"[:64],
        control_id=meta.get("subscription"), meta=orjson.dumps(meta).decode(),
    )
    res = await rt.writer.store(rec)
    log.info("fhir request stored" if res.stored else "fhir request not stored", extra={
        "action": "fhir.stored" if res.stored else "fhir.store_failed", "source": source.name,
        "method": request.method, "resource_type": meta.get("resource_type"), "status": rec.status,
        "subscription": meta.get("subscription")})
    return bool(res.stored)


async def _guard(request: Request, source_name: str) -> tuple[Source | None, Response | None]:
    """The source, or the answer: 429 (address throttled), 401 (not authenticated, also for an
    unknown source, so source names cannot be enumerated), 404 (unknown, after authentication)."""
    rt = request.app.state.runtime
    try:
        refuse_if_throttled(request)
    except HTTPException as exc:
        return None, _fhir(outcome("throttled", str(exc.detail)), 429, dict(exc.headers or {}))
    source = rt.sources.get(source_name)
    if source is None and _known_caller(request):
        return None, _fhir(outcome("not-found", f"unknown source {source_name!r}"), 404)
    if source is None or not _authorized(request, source):
        log.warning("fhir call refused", extra={"action": "fhir.unauthorized", "method": request.method,
                                                 "source": source.name if source else None})
        authentication_failed(request, "fhir-token", presented=bool(_credentials(request)))
        return None, _fhir(outcome("login", "missing or wrong token"), 401, {"WWW-Authenticate": "Bearer"})
    return source, None


async def _reject(request: Request, source: Source, raw: bytes, meta: dict[str, Any], code: str, text: str,
                  status: int = 400, headers: dict[str, str] | None = None) -> Response:
    """Keep the bad request (status ``failed``) and answer with an OperationOutcome."""
    await _store(request, source, raw, meta, status="failed", error=text)
    return _fhir(outcome(code, text), status, headers)


async def _body(request: Request, source: Source, kind: str, **meta: Any) -> tuple[bytes, Response | None]:
    """The whole body, or a 413 OperationOutcome when it is over ``http_max_fhir_bytes``
    (its prefix stored as a failed request; never truncated and accepted)."""
    body = await read_capped(request, request.app.state.runtime.settings.http_max_fhir_bytes)
    if not body.oversize:
        return body.data, None
    m = _meta(request, kind, **meta)
    m["refused_size"] = body.size
    return body.data, await _reject(request, source, body.data, m, "too-costly", body.reason(FHIR_LIMIT_SETTING),
                                    413, CLOSE)


def _accepts(source: Source, rtype: str) -> bool:
    return rtype in source.fhir.resource_types or rtype in EXTRA_TYPES


def _unavailable() -> Response:
    return _fhir(outcome("transient", "not stored; try again"), 503, {"Retry-After": "1"})


@router.put("/fhir/{source_name}/{rtype}/{rid}")
async def put_resource(source_name: str, rtype: str, rid: str, request: Request) -> Response:
    source, err = await _guard(request, source_name)
    if source is None:
        return err  # type: ignore[return-value]
    raw, refused = await _body(request, source, "resource", resource_type=rtype, id=rid)
    if refused is not None:
        return refused
    meta = _meta(request, "resource", resource_type=rtype, id=rid)
    if not _accepts(source, rtype):
        return await _reject(request, source, raw, meta, "not-supported", f"resource type {rtype} is not accepted here")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return await _reject(request, source, raw, meta, "structure", "body is not JSON")
    if not isinstance(doc, dict) or doc.get("resourceType") != rtype:
        return await _reject(request, source, raw, meta, "invalid", f"body is not a {rtype}")
    if doc.get("id") not in (None, rid):
        return await _reject(request, source, raw, meta, "invalid", "resource id does not match the URL")
    version = str((doc.get("meta") or {}).get("versionId") or "") or None
    meta["version"] = version
    dedup = f"fhir|{source.name}|{rtype}/{rid}/_history/{version}" if version else None
    if not await _store(request, source, raw, meta, dedup_key=dedup):
        return _unavailable()
    headers = {"Location": f"{request.url.path}" + (f"/_history/{version}" if version else "")}
    if version:
        headers["ETag"] = f'W/"{version}"'
    return _fhir(raw, 201 if version == "1" else 200, headers)


@router.delete("/fhir/{source_name}/{rtype}/{rid}")
async def delete_resource(source_name: str, rtype: str, rid: str, request: Request) -> Response:
    source, err = await _guard(request, source_name)
    if source is None:
        return err  # type: ignore[return-value]
    raw, refused = await _body(request, source, "delete", resource_type=rtype, id=rid)
    if refused is not None:
        return refused
    meta = _meta(request, "delete", resource_type=rtype, id=rid)
    if not _accepts(source, rtype):
        return await _reject(request, source, raw, meta, "not-supported", f"resource type {rtype} is not accepted here")
    if not await _store(request, source, raw, meta):
        return _unavailable()
    return _fhir(outcome("informational", f"delete of {rtype}/{rid} received", "information"), 200)


@router.post("/fhir/{source_name}/{rtype}")
async def post_type(source_name: str, rtype: str, request: Request) -> Response:
    """Payload-less rest-hook for one type (or a create with a body)."""
    source, err = await _guard(request, source_name)
    if source is None:
        return err  # type: ignore[return-value]
    raw, refused = await _body(request, source, "notification", resource_type=rtype)
    if refused is not None:
        return refused
    if not _accepts(source, rtype):
        meta = _meta(request, "ping", resource_type=rtype)
        return await _reject(request, source, raw, meta, "not-supported", f"resource type {rtype} is not accepted here")
    if raw.strip():
        return await _post_body(request, source, raw, expect_type=rtype)
    if not await _store(request, source, b"", _meta(request, "ping", resource_type=rtype, types=[rtype])):
        return _unavailable()
    return _fhir(outcome("informational", f"{rtype} sweep requested", "information"), 200)


@router.post("/fhir/{source_name}")
async def post_base(source_name: str, request: Request) -> Response:
    """A notification Bundle, or an empty body (sweep every type of the source)."""
    source, err = await _guard(request, source_name)
    if source is None:
        return err  # type: ignore[return-value]
    raw, refused = await _body(request, source, "notification")
    if refused is not None:
        return refused
    if not raw.strip():
        if not await _store(request, source, b"", _meta(request, "ping", types=list(source.fhir.resource_types))):
            return _unavailable()
        return _fhir(outcome("informational", "sweep requested", "information"), 200)
    return await _post_body(request, source, raw)


async def _post_body(request: Request, source: Source, raw: bytes, expect_type: str | None = None) -> Response:
    meta = _meta(request, "notification", resource_type=expect_type)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return await _reject(request, source, raw, meta, "structure", "body is not JSON")
    if not isinstance(doc, dict):
        return await _reject(request, source, raw, meta, "structure", "body is not a FHIR resource")
    rtype = doc.get("resourceType")
    if expect_type is None and is_notification(doc):
        try:
            n = parse_notification(doc)
        except NotificationError as exc:
            return await _reject(request, source, raw, meta, "invalid", str(exc))
        meta.update(notification_type=n.type, shape=n.shape, payload=n.payload, event_numbers=list(n.event_numbers),
                    events_since_start=n.events_since_start)
        meta["subscription"] = n.subscription_id or meta.get("subscription")
        dedup = None
        if n.type == "event-notification" and n.event_numbers and n.subscription_id:
            dedup = f"fhir|{source.name}|{n.subscription_id}|{','.join(map(str, n.event_numbers))}"
        if not await _store(request, source, raw, meta, dedup_key=dedup):
            return _unavailable()
        return _fhir(notification_ack(n.type), 200)
    if rtype == "Bundle" and doc.get("type") in ("transaction", "batch", "collection", "history"):
        meta["kind"] = "bundle"
        if not await _store(request, source, raw, meta):
            return _unavailable()
        return _fhir(outcome("informational", "bundle received", "information"), 200)
    if isinstance(rtype, str) and _accepts(source, rtype) and expect_type in (None, rtype):
        meta.update(kind="resource", resource_type=rtype, id=doc.get("id"))
        if not doc.get("id"):
            return await _reject(request, source, raw, meta, "required", "resource has no id")
        if not await _store(request, source, raw, meta):
            return _unavailable()
        return _fhir(raw, 201)
    return await _reject(request, source, raw, meta, "invalid",
                         f"expected a notification Bundle or an accepted resource, got {rtype!r}")


@router.get("/fhir/{source_name}/metadata")
async def metadata(source_name: str, request: Request) -> Response:
    source, err = await _guard(request, source_name)
    if source is None:
        return err  # type: ignore[return-value]
    return _fhir({
        "resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
        "format": ["json"], "date": "2025-01-01",
        "rest": [{"mode": "server", "resource": [
            {"type": t, "interaction": [{"code": "update"}, {"code": "delete"}, {"code": "create"}]}
            for t in [*source.fhir.resource_types, *EXTRA_TYPES]]}],
    }, 200)
