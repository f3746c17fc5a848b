"""Helpers of the end-to-end tests against the HAPI sandbox (topic and rest-hook subscriptions)."""
from __future__ import annotations

from typing import Any

from middleware.sandbox import hooks
from middleware.sandbox.local import CareloopApi

from .server import wait_until

Json = dict[str, Any]


def poll(pred: Any, deadline_s: float, what: str) -> Any:
    """``pred``'s first truthy value within ``deadline_s`` (checked every 0.1 s: each check asks a server)."""
    return wait_until(pred, deadline_s, 0.1, what=what)


def put_version(client: Any, res: Json) -> str:
    """PUT ``res`` to the FHIR server; the version it stored."""
    r = client.put(f"{res['resourceType']}/{res['id']}", json=res, headers=hooks.FHIR_JSON)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["meta"]["versionId"])


def messages_about(api: CareloopApi, ref: str) -> list[Json]:
    """careloop's stored messages about ``ref`` (``Type/id``)."""
    t, i = ref.split("/")
    return [m for m in api.messages(500) if (m.get("meta") or {}).get("resource_type") == t
            and (m.get("meta") or {}).get("id") == i]


def events_about(api: CareloopApi, ref: str) -> list[Json]:
    """careloop's clinical events about ``ref``, oldest first."""
    evs = [e for e in api.events(500) if f"{e['resource'].get('resourceType')}/{e['resource'].get('id')}" == ref]
    return sorted(evs, key=lambda e: e["id"])
