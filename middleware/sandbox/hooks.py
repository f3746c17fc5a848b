"""Rest-hook Subscriptions on the sandbox that point at careloop, and the warm-up that proves
HAPI really delivers to it.

Ids are fixed (``careloop-sbx-<type>``, PUT so re-applying updates in place) and each channel
sends two headers: ``Authorization: Bearer <token>`` (careloop's per-source notification
token) and ``X-Careloop-Subscription: <id>``, which careloop records in the inbound row's
``meta.subscription`` — so an observer can tell a notification HAPI sent from a call anyone
else made. ``payload=True`` sends the resource (``PUT {endpoint}/{Type}/{id}``) and deletes;
``payload=False`` is a bare ``POST {endpoint}`` that makes careloop re-read.

When ``subscriptions/*.json`` (issue 3, ``careloop subscriptions apply``) exist, the CLI
applies those; these helpers are what scenarios and tests need regardless: a subscription
set they control and a readiness check.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import httpx

Json = dict[str, Any]
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
SEND_DELETE_EXT = "http://hapifhir.io/fhir/StructureDefinition/subscription-send-delete-messages"
SUB_HEADER = "X-Careloop-Subscription"
TYPES = ("Appointment", "Encounter", "CarePlan")


class HookError(RuntimeError):
    """A subscription could not be applied or never started delivering."""


def subscription(sub_id: str, criteria: str, endpoint: str, token: str | None, *, payload: bool = True,
                 deletes: bool = True, reason: str = "careloop sandbox") -> Json:
    """A rest-hook Subscription (R4) with our two headers; pure."""
    headers = [f"{SUB_HEADER}: {sub_id}"]
    if token:
        headers.insert(0, f"Authorization: Bearer {token}")
    channel: Json = {"type": "rest-hook", "endpoint": endpoint, "header": headers}
    if payload:
        channel["payload"] = "application/fhir+json"
        if deletes:
            channel["extension"] = [{"url": SEND_DELETE_EXT, "valueBoolean": True}]
    return {"resourceType": "Subscription", "id": sub_id, "status": "requested", "reason": reason,
            "criteria": criteria, "channel": channel}


def sandbox_set(endpoint: str, token: str | None, prefix: str = "careloop-sbx") -> list[Json]:
    """One payload subscription per scenario resource type (deletes included)."""
    return [subscription(f"{prefix}-{t.lower()}", f"{t}?", endpoint, token) for t in TYPES]


def apply(client: httpx.Client, subs: list[Json], deadline_s: float = 60) -> list[str]:
    """PUT each Subscription (create or update), then wait until each is ``active``; return ids.

    Raises :class:`HookError` naming the Subscription and the wait when the server refuses,
    does not answer, or does not activate them all within ``deadline_s``.
    """
    ids = []
    for sub in subs:
        try:
            r = client.put(f"Subscription/{sub['id']}", json=sub, headers=FHIR_JSON)
        except httpx.HTTPError as exc:
            raise HookError(f"PUT Subscription/{sub['id']} on {client.base_url}: no answer ({type(exc).__name__})") from exc
        if r.status_code not in (200, 201):
            raise HookError(f"PUT Subscription/{sub['id']} -> {r.status_code}: {r.text[:300]}")
        ids.append(str(sub["id"]))
    end = time.monotonic() + deadline_s
    for sid in ids:
        wait_active(client, sid, deadline_s, end=end)
    return ids


def wait_active(client: httpx.Client, sub_id: str, deadline_s: float = 60, *, end: float | None = None) -> None:
    """Poll ``Subscription/{id}`` until ``active``; each GET is cut to the time left.

    Raises :class:`HookError` when it reports ``error``, or when ``deadline_s`` (or the shared
    ``end``, a ``time.monotonic()`` instant) passes: "timed out after N s waiting for …".
    """
    end = end if end is not None else time.monotonic() + deadline_s
    status: str | None = None
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        try:
            status = client.get(f"Subscription/{sub_id}", headers=FHIR_JSON, timeout=left).json().get("status")
        except httpx.HTTPError as exc:
            status = f"unanswered ({type(exc).__name__})"
        if status == "active":
            return
        if status == "error":
            raise HookError(f"Subscription/{sub_id} on {client.base_url} is in status 'error', not active")
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    raise HookError(f"timed out after {deadline_s:g} s waiting for Subscription/{sub_id} on {client.base_url} "
                    f"to become active (last status: {status or 'no answer'})")


def delete(client: httpx.Client, ids: list[str]) -> None:
    for sid in ids:
        client.delete(f"Subscription/{sid}")


def warm_up(client: httpx.Client, rtype: str, seen: Callable[[str], bool], deadline_s: float = 60,
            rid: str = "careloop-sbx-warmup") -> float:
    """Touch a warm-up resource of ``rtype`` until ``seen(rid)`` is true; return seconds taken.

    HAPI marks a Subscription ``active`` a moment before its matcher knows it, so the first
    change after activation can go unnotified. The warm-up resource belongs to no patient.
    """
    start = time.monotonic()
    bodies: dict[str, dict[str, Any]] = {
        "Appointment": {"status": "proposed", "participant": [{"status": "needs-action"}]},
        "Encounter": {"status": "planned", "class": {"code": "AMB"}},
        "CarePlan": {"status": "draft", "intent": "proposal", "subject": {"display": "nobody"}},
    }
    n = 0
    while True:
        n += 1
        body = {"resourceType": rtype, "id": rid, **bodies.get(rtype, {}),
                "meta": {"tag": [{"system": "urn:careloop:sandbox", "code": "warm-up"}]}}
        body["text"] = {"status": "generated", "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\">warm-up {time.time():.3f}</div>"}
        r = client.put(f"{rtype}/{rid}", json=body, headers=FHIR_JSON)
        if r.status_code not in (200, 201):
            raise HookError(f"warm-up PUT {rtype}/{rid} -> {r.status_code}: {r.text[:300]}")
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            if seen(rid):
                return time.monotonic() - start
            time.sleep(0.05)
        if time.monotonic() - start > deadline_s:
            raise HookError(f"HAPI never delivered a {rtype} notification in {deadline_s:.0f}s (tried {n} changes)")
