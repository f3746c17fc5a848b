"""Run a sandbox journey (:mod:`.journeys`) on HAPI and watch careloop react, step by step.

For each step the runner writes the step's resources on HAPI, then polls careloop's operator
API (and the webhook sink) until everything the step expects has happened, or a deadline:

1. a notification **from HAPI** for every write — an inbound ``fhir`` row for that resource
   version carrying ``meta.subscription`` (the ``X-Careloop-Subscription`` header HAPI sent,
   see :mod:`.hooks`);
2. the expected events (``appointment.noshow`` …) with their transition;
3. the expected triggers fired and delivered to the sink, or cancelled.

``on_update(index, step, observed, missing, step_watermark)`` is called after every poll (the CLI draws a progress
display from it). Returns a :class:`RunReport`; ``report.ok`` tells whether every
expectation was met. Nothing here sleeps a fixed time: every wait is a deadline-bounded poll.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import httpx

from . import hooks, journeys
from .journeys import Journey, Step, Write
from .local import CareloopApi

Json = dict[str, Any]
SinkReader = Callable[[], list[Json]]
DONE_TRIGGER = ("cancelled", "skipped", "suppressed")


@dataclass
class Observed:
    """What careloop shows for the journey so far (newest last)."""

    notifications: list[Json] = field(default_factory=list)
    events: list[Json] = field(default_factory=list)
    triggers: list[Json] = field(default_factory=list)
    deliveries: list[Json] = field(default_factory=list)
    sink: list[Json] = field(default_factory=list)


@dataclass
class StepReport:
    step: Step
    writes: list[tuple[str, str | None]]  # (Type/id, version HAPI assigned; None for deletes)
    observed: Observed
    missing: list[str]
    seconds: float
    since: dict[str, int] = field(default_factory=dict)  # operator-API ids before the step

    @property
    def ok(self) -> bool:
        return not self.missing


@dataclass
class RunReport:
    journey: Journey
    steps: list[StepReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps) and len(self.steps) == len(self.journey.steps)


def new_tag() -> str:
    return uuid.uuid4().hex[:8]


def _ref_of(meta: Json) -> str | None:
    if meta.get("resource_type") and meta.get("id"):
        return f"{meta['resource_type']}/{meta['id']}"
    return None


def _event_ref(e: Json) -> str | None:
    res = e.get("resource") or {}
    if isinstance(res, dict) and res.get("resourceType") and res.get("id"):
        return f"{res['resourceType']}/{res['id']}"
    return None


def observe(api: CareloopApi, journey: Journey, since: dict[str, int], sink: SinkReader | None) -> Observed:
    """Everything careloop holds for the journey's resources since the ``since`` watermark."""
    refs = journey.resource_ids()
    obs = Observed()
    for m in reversed(api.messages(500)):
        meta = m.get("meta") or {}
        if m["id"] > since["messages"] and m.get("channel") == "fhir" and _ref_of(meta) in refs:
            obs.notifications.append(m)
    keys: set[str] = set()
    event_ids: set[int] = set()
    for e in reversed(api.events(500)):
        if e["id"] > since["events"] and _event_ref(e) in refs:
            obs.events.append(e)
            event_ids.add(e["id"])
            if e.get("patient_key"):
                keys.add(e["patient_key"])
    for t in reversed(api.triggers(500)):
        if t["id"] > since["triggers"] and (t.get("event_id") in event_ids or t.get("patient_key") in keys):
            obs.triggers.append(t)
    tids = {t["id"] for t in obs.triggers}
    obs.deliveries = [d for d in reversed(api.deliveries(500)) if d["trigger_id"] in tids]
    if sink is not None:
        obs.sink = [r for r in sink() if r.get("trigger_id") in tids]
    return obs


def missing(step: Step, writes: list[tuple[str, str | None]], obs: Observed, step_since: dict[str, int],
            sink_known: bool, pending_ok: bool = False) -> list[str]:
    """What the step still waits for (empty when done); pure.

    ``pending_ok``: a trigger that is scheduled (``pending``) counts as fired — for a careloop
    whose rules were not sped up, where the real wait (hours, days) cannot be watched.
    """
    out: list[str] = []
    for ref, version in writes:
        ok = any(_ref_of(m.get("meta") or {}) == ref and (m.get("meta") or {}).get("subscription")
                 and (version is None or str((m.get("meta") or {}).get("version")) == version)
                 for m in obs.notifications)
        if not ok:
            out.append(f"HAPI notification for {ref}" + (f" v{version}" if version else " (delete)"))
    for etype in step.events:
        if not any(e["type"] == etype and e["id"] > step_since["events"] for e in obs.events):
            out.append(f"event {etype}")
    for rule in step.fired:
        fired = [t for t in obs.triggers if t["rule_id"] == rule and t["status"] == "fired"]
        if not fired and pending_ok and any(t["rule_id"] == rule and t["status"] == "pending" for t in obs.triggers):
            continue
        if not fired:
            out.append(f"trigger {rule} fired")
            continue
        tids = {t["id"] for t in fired}
        if sink_known:
            if not any(r.get("trigger_id") in tids for r in obs.sink):
                out.append(f"sink received {rule}")
        elif not any(d["trigger_id"] in tids and d["status"] == "delivered" for d in obs.deliveries):
            out.append(f"delivery of {rule}")
    for rule in step.cancelled:
        if not any(t["rule_id"] == rule and t["status"] in DONE_TRIGGER for t in obs.triggers):
            out.append(f"trigger {rule} cancelled")
    for rule in step.exited:
        tids = {t["id"] for t in obs.triggers if t["rule_id"] == rule and t["status"] == "fired"}
        if sink_known:
            if not any(r.get("type") == "careloop_exit" and r.get("trigger_id") in tids for r in obs.sink):
                out.append(f"sink received the exit of {rule}")
        elif not any(d["trigger_id"] in tids and d.get("kind") == "exit" and d["status"] == "delivered"
                     for d in obs.deliveries):
            out.append(f"exit of {rule} delivered")
    return out


def _write(client: httpx.Client, w: Write) -> tuple[str, str | None]:
    if w.delete:
        r = client.delete(w.ref)
        if r.status_code not in (200, 204):
            raise hooks.HookError(f"DELETE {w.ref} -> {r.status_code}: {r.text[:300]}")
        return w.ref, None
    r = client.put(w.ref, json=w.resource, headers=hooks.FHIR_JSON)
    if r.status_code not in (200, 201):
        raise hooks.HookError(f"PUT {w.ref} -> {r.status_code}: {r.text[:300]}")
    version = str((r.json().get("meta") or {}).get("versionId") or "") or None
    if w.resource["resourceType"] not in hooks.TYPES:
        return w.ref, "-"  # not subscribed (e.g. Patient): careloop reads it when it needs it
    return w.ref, version


def prepare(client: httpx.Client, api: CareloopApi, endpoint: str, token: str | None,
            deadline_s: float = 90, prefix: str = "careloop-sbx") -> list[str]:
    """Point the sandbox Subscriptions (ids ``{prefix}-<type>``) at ``endpoint`` and wait until
    HAPI delivers each type to careloop; return the Subscription ids."""
    ids = hooks.apply(client, hooks.sandbox_set(endpoint, token, prefix))

    def seen(rtype: str) -> Callable[[str], bool]:
        def check(rid: str) -> bool:
            return any((m.get("meta") or {}).get("id") == rid and (m.get("meta") or {}).get("resource_type") == rtype
                       and (m.get("meta") or {}).get("subscription") for m in api.messages(50))
        return check

    for rtype in hooks.TYPES:
        hooks.warm_up(client, rtype, seen(rtype), deadline_s, rid=f"{prefix}-warmup")
    return ids


def run(journey: Journey, fhir_base: str, api: CareloopApi, *, sink: SinkReader | None = None,
        on_update: Callable[[int, Step, Observed, list[str], dict[str, int]], None] | None = None,
        step_deadline_s: float = 60.0, pending_ok: bool = False) -> RunReport:
    """Perform ``journey`` on HAPI and wait for careloop's reaction to each step (see module doc)."""
    report = RunReport(journey)
    since = api.newest_ids()
    with httpx.Client(base_url=fhir_base.rstrip("/") + "/", timeout=30) as client:
        for i, step in enumerate(journey.steps):
            step_since = api.newest_ids()
            t0 = time.monotonic()
            writes = [w for w in (_write(client, w) for w in step.writes)]
            expected = [(ref, v) for ref, v in writes if v != "-"]
            end = t0 + step_deadline_s
            while True:
                obs = observe(api, journey, since, sink)
                left = missing(step, expected, obs, step_since, sink is not None, pending_ok)
                if on_update is not None:
                    on_update(i, step, obs, left, step_since)
                if not left or time.monotonic() > end:
                    break
                time.sleep(0.1)
            report.steps.append(StepReport(step, expected, obs, left, time.monotonic() - t0, step_since))
            if left:
                break
    return report


def build(name: str, tag: str | None = None, now: datetime | None = None) -> Journey:
    """The journey ``name`` with a fresh tag (unique patient) at ``now`` (default: the clock)."""
    return journeys.build(name, tag or new_tag(), now or datetime.now(timezone.utc))
