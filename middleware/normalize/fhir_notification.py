"""Topic-based subscription notification Bundles -> :class:`Notification` (pure).

Accepts the three status shapes:

* R4, Subscriptions R5 Backport IG: first entry a ``Parameters`` with parameters
  ``subscription``, ``topic``, ``status``, ``type``, ``events-since-subscription-start``
  and repeated ``notification-event`` (parts ``event-number``, ``timestamp``, ``focus``);
* R4B ``SubscriptionStatus`` (``eventsSinceSubscriptionStart`` and
  ``notificationEvent.eventNumber`` are strings);
* R5 ``SubscriptionStatus`` (the same as integer64: a JSON string or number).

The payload content is read from the entries: resources present -> ``full-resource``,
entries with only ``fullUrl``/``request`` -> ``id-only``, no entry but the status ->
``empty``. Raises :class:`NotificationError` for anything that is not such a Bundle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]
TYPES = ("handshake", "heartbeat", "event-notification", "query-status", "query-event")


class NotificationError(ValueError):
    """The body is not a subscription notification Bundle (the message says why)."""


@dataclass(frozen=True)
class Notification:
    type: str
    subscription: str | None  # "Subscription/123" (the id part is in ``subscription_id``)
    topic: str | None
    status: str | None
    events_since_start: int | None
    event_numbers: tuple[int, ...]
    focus: tuple[str, ...]  # "Appointment/1" references named by events or id-only entries
    resources: tuple[Json, ...] = field(default=())  # full-resource payload
    payload: str = "empty"  # empty | id-only | full-resource
    shape: str = "R4-backport"  # R4-backport | R4B | R5

    @property
    def subscription_id(self) -> str | None:
        if not self.subscription:
            return None
        parts = [p for p in self.subscription.split("/") if p]
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        return parts[-1] if parts else None


def _int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise NotificationError(f"not an integer: {v!r}") from None


def _value(p: Json) -> Any:
    for k, v in p.items():
        if k.startswith("value"):
            return v
    return None


def _ref(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("reference")
    return v if isinstance(v, str) else None


def _relative(url: str) -> str:
    """``http://x/fhir/Appointment/1/_history/2`` -> ``Appointment/1``."""
    parts = [p for p in url.split("?")[0].split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return "/".join(parts[-2:])


def is_notification(doc: Any) -> bool:
    """True for a Bundle whose first entry is a subscription status."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        return False
    first = ((doc.get("entry") or [{}])[0] or {}).get("resource") or {}
    return first.get("resourceType") == "SubscriptionStatus" or (
        first.get("resourceType") == "Parameters"
        and any(p.get("name") in ("type", "subscription") for p in first.get("parameter") or [])
    )


def parse_notification(doc: Any) -> Notification:
    """Parse a notification Bundle (see the module docstring)."""
    if not is_notification(doc):
        raise NotificationError("not a subscription notification Bundle (first entry is no status)")
    entries = doc.get("entry") or []
    status = entries[0]["resource"]
    numbers: list[int] = []
    focus: list[str] = []
    if status["resourceType"] == "Parameters":
        shape = "R4-backport"
        params = status.get("parameter") or []
        one = {p.get("name"): _value(p) for p in params if p.get("name") != "notification-event"}
        ntype, sub, topic, st = one.get("type"), _ref(one.get("subscription")), one.get("topic"), one.get("status")
        since = _int(one.get("events-since-subscription-start"))
        for p in params:
            if p.get("name") != "notification-event":
                continue
            parts = {q.get("name"): _value(q) for q in p.get("part") or []}
            if (n := _int(parts.get("event-number"))) is not None:
                numbers.append(n)
            if (f := _ref(parts.get("focus"))):
                focus.append(_relative(f))
    else:
        sub, topic, st, ntype = _ref(status.get("subscription")), status.get("topic"), status.get("status"), status.get("type")
        raw_since = status.get("eventsSinceSubscriptionStart")
        shape = "R5" if isinstance(raw_since, int) or any(
            isinstance(e.get("eventNumber"), int) for e in status.get("notificationEvent") or []) else "R4B"
        since = _int(raw_since)
        for e in status.get("notificationEvent") or []:
            if (n := _int(e.get("eventNumber"))) is not None:
                numbers.append(n)
            if (f := _ref(e.get("focus"))):
                focus.append(_relative(f))
    if ntype not in TYPES:
        raise NotificationError(f"unknown notification type {ntype!r}")
    resources: list[Json] = []
    payload = "empty"
    for e in entries[1:]:
        res = e.get("resource")
        if isinstance(res, dict) and res.get("resourceType"):
            resources.append(res)
            payload = "full-resource"
        elif e.get("fullUrl") or (e.get("request") or {}).get("url"):
            ref = _relative(e.get("fullUrl") or e["request"]["url"])
            if ref not in focus:
                focus.append(ref)
            if payload == "empty":
                payload = "id-only"
    return Notification(
        type=ntype, subscription=sub, topic=topic, status=st, events_since_start=since,
        event_numbers=tuple(numbers), focus=tuple(focus), resources=tuple(resources), payload=payload, shape=shape,
    )
