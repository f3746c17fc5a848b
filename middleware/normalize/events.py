"""Derive clinical events from a previous and a current version of a resource (pure)."""
from __future__ import annotations

from typing import Any, cast

_VOLATILE = ("meta", "text")


def _strip(res: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (res or {}).items() if k not in _VOLATILE}


def derive(
    resource: dict[str, Any], previous: dict[str, Any] | None, *, deleted: bool = False
) -> list[tuple[str, str | None, str | None]]:
    """Return ``[(event_type, previous_status, status)]`` for one change.

    A first sighting emits its status event with no previous status; a status change
    emits ``<resource>.<new status>``; a booked appointment whose start moved emits
    ``appointment.rescheduled``; any other change ``<resource>.updated``; no change
    emits nothing. CarePlan activity status changes add ``careplan.activity.<status>``.
    """
    rtype = resource.get("resourceType", "").lower()
    status = resource.get("status")
    prev_status = previous.get("status") if previous else None
    if deleted:
        return [(f"{rtype}.deleted", prev_status, prev_status)]
    events: list[tuple[str, str | None, str | None]] = []
    if previous is None:
        events.append((f"{rtype}.{status or 'unknown'}", None, status))
    elif status != prev_status:
        events.append((f"{rtype}.{status or 'unknown'}", prev_status, status))
    elif rtype == "appointment" and status == "booked" and (
        resource.get("start") != previous.get("start") or resource.get("end") != previous.get("end")
    ):
        events.append(("appointment.rescheduled", prev_status, status))
    elif _strip(resource) != _strip(previous):
        events.append((f"{rtype}.updated", prev_status, status))
    if rtype == "careplan":
        events += _activity_events(resource, previous)
    return events


def activity_key(act: dict[str, Any], index: int) -> str:
    ref = (act.get("reference") or {}).get("reference")
    if ref:
        return cast(str, ref)  # Reference.reference is a string in FHIR R4
    det = act.get("detail") or {}
    code = ((det.get("code") or {}).get("coding") or [{}])[0]
    return f"{code.get('system', '')}|{code.get('code', '')}|{index}"


def _activity_events(
    resource: dict[str, Any], previous: dict[str, Any] | None
) -> list[tuple[str, str | None, str | None]]:
    before = {
        activity_key(a, i): (a.get("detail") or {}).get("status")
        for i, a in enumerate((previous or {}).get("activity") or [])
    }
    out = []
    for i, a in enumerate(resource.get("activity") or []):
        st = (a.get("detail") or {}).get("status")
        if not st:
            continue
        old = before.get(activity_key(a, i))
        if old != st:
            out.append((f"careplan.activity.{st}", old, st))
    return out
