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
    """PUT each Subscription (create or update), then wait until each is ``active``; return ids."""
    ids = []
    for sub in subs:
        r = client.put(f"Subscription/{sub['id']}", json=sub, headers=FHIR_JSON)
        if r.status_code not in (200, 201):
            raise HookError(f"PUT Subscription/{sub['id']} -> {r.status_code}: {r.text[:300]}")
        ids.append(str(sub["id"]))
    for sid in ids:
        wait_active(client, sid, deadline_s)
    return ids


def wait_active(client: httpx.Client, sub_id: str, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    status = None
    while time.monotonic() < end:
        status = client.get(f"Subscription/{sub_id}", headers=FHIR_JSON).json().get("status")
        if status == "active":
            return
        if status == "error":
            break
        time.sleep(0.2)
    raise HookError(f"Subscription/{sub_id} is {status!r}, not active")


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
    bodies = {
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
