"""The processor handler for ``channel="fhir"`` inbox rows (see ``api/fhir.py`` for ``meta``).

``meta.kind``:

* ``resource``: a full resource (PUT, POSTed create, or fetched by the reconciler) -> R4 ->
  :func:`apply_change` with ``meta.arrival``; ``Patient`` only updates patient identity.
* ``delete``: the stored resource is applied as deleted (unknown resources are noted only).
* ``notification``: a topic Bundle. Event numbers are tracked per subscription in ``kv``;
  a gap asks for an immediate reconcile, a counter back at 0/1 (server restart) is not a
  gap. ``full-resource`` entries are applied, ``id-only`` focus is read, ``empty`` sweeps.
* ``ping``: a payload-less rest-hook; sweeps ``meta.types`` from the high-water mark.
* ``bundle``: transaction/batch entries applied one by one.

Fetches are asked of a :class:`FetchPlanner` (the reconciler), which stores what it reads
back into the inbox, so no network call happens while the processor holds the database;
the exceptions are a ``_history`` read of the previous version when a transition needs it
and the state is missing, and the Patient read for patient identity (both short, cached).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any, Protocol, Sequence

import orjson

from ..config.sources import Source
from ..model import InboundItem, ResourceChange
from ..normalize.fhir import mr_key, patient_id, patient_key_from_reference, patient_reference, source_systems, to_r4
from ..normalize.fhir_notification import Notification, parse_notification
from ..rules.load import RuleSet
from ..storage.queries.ingest import StateRecord
from ..storage.sql import UnitOfWork
from .changes import (ChangeResult, apply_change, dumps, load_state, lookup_identity, remember_identity,
                      resolve_key, save_state, upsert_patient)
from .fhir_state import kv_get, kv_set, parse_instant, pending_key, sub_key

log = logging.getLogger("careloop.fhir.handler")
FHIR_ID = "urn:careloop:fhir-id:"  # ResourceIdentity prefix: "<prefix><source>|<Type>/<id>" -> stored key
MAX_MISSING = 1000


class FetchPlanner(Protocol):
    """What the handler needs from the reconciler (thread-safe calls)."""

    def request_sweep(self, source: str, types: Sequence[str], arrival: str, reason: str) -> None: ...
    def request_read(self, source: str, rtype: str, rid: str, arrival: str) -> None: ...
    def fetcher(self, source: str) -> Any: ...


def track_events(state: dict[str, Any], n: Notification) -> tuple[bool, bool]:
    """Update a subscription's counter state in place; return ``(gap, reset)`` (pure).

    ``state["last_event"]`` is the highest event number seen, ``state["missing"]`` the
    numbers skipped and not yet seen. A notification starting again at 0/1 below the last
    number (or a status whose ``events-since-subscription-start`` is below it) is a reset.
    """
    last = state.get("last_event")
    missing = set(state.get("missing") or [])
    nums = sorted(n.event_numbers) if n.type == "event-notification" else []
    reset = gap = False
    if nums and last is not None and nums[0] <= 1 and nums[0] not in missing and nums[-1] < last:
        reset = True
    elif not nums and n.events_since_start is not None and last is not None and n.events_since_start < last - len(missing):
        reset = True
    if reset:
        last, missing = None, set()
        state["resets"] = int(state.get("resets", 0)) + 1
    if nums:
        missing -= set(nums)
        top = last or 0
        new_missing = set(range(top + 1, nums[-1] + 1)) - set(nums)
        if new_missing:
            gap = True
            missing |= new_missing
        last = max(top, nums[-1])
    elif n.type == "heartbeat" and n.events_since_start is not None:
        top = last or 0
        if n.events_since_start > top:
            gap = True
            missing |= set(range(top + 1, n.events_since_start + 1))
            last = n.events_since_start
    elif n.type == "handshake" and n.events_since_start is not None and last is None:
        last = n.events_since_start
    state["last_event"] = last
    state["missing"] = sorted(missing)[-MAX_MISSING:]
    return gap, reset


def _merge(total: ChangeResult, r: ChangeResult) -> None:
    total.events += r.events
    total.decisions += r.decisions
    total.triggers += r.triggers
    total.cancelled += r.cancelled
    total.due_now = total.due_now or r.due_now
    if r.note and not total.note:
        total.note = r.note


class FhirHandler:
    """Callable matching ``pipeline.process.Handler``; ``planner`` may be ``None`` (no fetching)."""

    def __init__(self, planner: FetchPlanner | None = None, cache_size: int = 50_000, miss_ttl_s: float = 300.0,
                 down_s: float = 30.0) -> None:
        self.planner = planner
        self._patients: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._fresh: dict[tuple[str, str], dict[str, Any]] = {}  # read but not yet stored
        self._misses: dict[tuple[str, str], float] = {}  # unreadable patients, until a monotonic time
        self.cache_size = cache_size
        self.miss_ttl_s = miss_ttl_s
        self._down: dict[str, float] = {}  # source -> monotonic time until which its server is not asked
        self.down_s = down_s

    def __call__(self, u: UnitOfWork, msg: InboundItem, rs: RuleSet, now: datetime) -> ChangeResult:
        meta = orjson.loads(msg.meta or "{}")
        source = rs.sources.get(msg.source) or rs.sources.by_name["default"]
        kind = meta.get("kind")
        arrival = meta.get("arrival") or "notification"
        if kind == "resource":
            return self.apply_resource(u, source, orjson.loads(bytes(msg.raw)), arrival, now, msg.id, rs)
        if kind == "delete":
            return self.apply_delete(u, source, meta["resource_type"], str(meta["id"]), arrival, now, msg.id, rs,
                                     version=meta.get("version"), at=parse_instant(meta.get("last_updated")))
        if kind == "ping":
            types = meta.get("types") or list(source.fhir.resource_types)
            return self._sweep(u, source, types, "notification", "ping", now)
        if kind == "notification":
            return self.apply_notification(u, source, parse_notification(orjson.loads(bytes(msg.raw))), meta, now, msg.id, rs)
        if kind == "bundle":
            return self.apply_bundle(u, source, orjson.loads(bytes(msg.raw)), now, msg.id, rs)
        raise ValueError(f"unknown fhir message kind {kind!r}")

    # -- resources ----------------------------------------------------------------------
    def apply_resource(self, u: UnitOfWork, source: Source, resource: dict[str, Any], arrival: str,
                       now: datetime, inbound_id: int | None, rs: RuleSet) -> ChangeResult:
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            return self._patient(u, source, resource, now)
        if rtype not in source.fhir.resource_types:
            return ChangeResult(note=f"{rtype} is not a resource type of source {source.name}")
        r4 = to_r4(resource, source.fhir.version)
        pkey = self.patient_key(u, source, r4, now)
        occurred = parse_instant((r4.get("meta") or {}).get("lastUpdated")) or now
        if arrival in ("notification", "reconcile"):
            self._seed_previous(u, source, r4, pkey, now)
        change = ResourceChange(resource=r4, previous=None, patient_key=pkey, source=source.name, arrival=arrival,
                                occurred_at=occurred)
        res = apply_change(u, change, rs, now=now, inbound_id=inbound_id, source_zone=self._zone(source))
        if res.key:  # a body-less DELETE names <source>|<Type>/<id>: map it to the stored key
            remember_identity(u, f"{FHIR_ID}{source.name}|{r4['resourceType']}/{r4.get('id')}", res.key)
        return res

    def apply_delete(self, u: UnitOfWork, source: Source, rtype: str, rid: str, arrival: str, now: datetime,
                     inbound_id: int | None, rs: RuleSet, *, version: str | None = None,
                     at: datetime | None = None) -> ChangeResult:
        known = lookup_identity(u, f"{FHIR_ID}{source.name}|{rtype}/{rid}")
        state = load_state(u, known or f"{rtype}/{rid}")
        if state is None:
            return ChangeResult(note=f"delete of {rtype}/{rid}, which careloop never held: nothing to do")
        if state.deleted:
            return ChangeResult(note="already deleted")
        resource = orjson.loads(state.resource)
        if version:
            resource["meta"] = {**(resource.get("meta") or {}), "versionId": str(version)}
        change = ResourceChange(resource=resource, previous=None, patient_key=state.patient_key, source=source.name,
                                arrival=arrival, occurred_at=at or now, deleted=True)
        return apply_change(u, change, rs, now=now, inbound_id=inbound_id, source_zone=self._zone(source))

    def apply_bundle(self, u: UnitOfWork, source: Source, doc: dict[str, Any], now: datetime,
                     inbound_id: int | None, rs: RuleSet) -> ChangeResult:
        total = ChangeResult()
        for e in doc.get("entry") or []:
            req = e.get("request") or {}
            if req.get("method") == "DELETE":
                parts = [p for p in str(req.get("url", "")).split("?")[0].split("/") if p]
                if len(parts) >= 2:
                    _merge(total, self.apply_delete(u, source, parts[-2], parts[-1], "notification", now, inbound_id, rs))
            elif isinstance(e.get("resource"), dict):
                _merge(total, self.apply_resource(u, source, e["resource"], "notification", now, inbound_id, rs))
        return total

    # -- notifications ------------------------------------------------------------------
    def apply_notification(self, u: UnitOfWork, source: Source, n: Notification, meta: dict[str, Any],
                           now: datetime, inbound_id: int | None, rs: RuleSet) -> ChangeResult:
        total = ChangeResult()
        sub = n.subscription_id or meta.get("subscription") or "unknown"
        key = sub_key(source.name, sub)
        state = kv_get(u, key) or {}
        gap, reset = (False, False) if n.type in ("query-status", "query-event") else track_events(state, n)
        state.update(last_notification_at=now.timestamp(), last_type=n.type, status=n.status, topic=n.topic,
                     events_since_start=n.events_since_start, shape=n.shape)
        if gap:
            state["gaps"] = int(state.get("gaps", 0)) + 1
        kv_set(u, key, state, now.timestamp())
        if reset:
            log.info("event counter reset", extra={"action": "fhir.counter_reset", "source": source.name, "subscription": sub})
        if gap:
            log.warning("event-number gap", extra={"action": "fhir.gap", "source": source.name, "subscription": sub})
            _merge(total, self._sweep(u, source, list(source.fhir.resource_types), "reconcile", "gap", now))
        if n.type not in ("event-notification", "query-event"):
            total.note = total.note or f"{n.type} recorded"
            return total
        if n.payload == "full-resource":
            for res in n.resources:
                _merge(total, self.apply_resource(u, source, res, "notification", now, inbound_id, rs))
        elif n.payload == "id-only":
            for ref in n.focus:
                rtype, _, rid = ref.partition("/")
                if rid and (rtype in source.fhir.resource_types) and self.planner is not None:
                    self.planner.request_read(source.name, rtype, rid, "notification")
            total.note = total.note or f"{len(n.focus)} read(s) requested"
        else:
            types = sorted({f.split("/")[0] for f in n.focus} & set(source.fhir.resource_types)) or list(source.fhir.resource_types)
            _merge(total, self._sweep(u, source, types, "notification", "empty", now))
        return total

    def _sweep(self, u: UnitOfWork, source: Source, types: Sequence[str], arrival: str, reason: str,
               now: datetime) -> ChangeResult:
        for t in types:  # durable: a sweep asked for survives a crash (the reconciler clears it)
            kv_set(u, pending_key(source.name, t), {"arrival": arrival, "reason": reason}, now.timestamp())
        if self.planner is None:
            return ChangeResult(note=f"sweep of {','.join(types)} pending ({reason}); no fetcher running")
        self.planner.request_sweep(source.name, list(types), arrival, reason)
        return ChangeResult(note=f"sweep of {','.join(types)} requested ({reason})")

    # -- identity -----------------------------------------------------------------------
    def _zone(self, source: Source) -> str:
        return source.timezone if source.kind == "fhir" else source.hl7.timezone

    def _cache(self, source: str, pid: str, key: str) -> None:
        self._patients[(source, pid)] = key
        self._patients.move_to_end((source, pid))
        while len(self._patients) > self.cache_size:
            self._patients.popitem(last=False)

    def _patient(self, u: UnitOfWork, source: Source, patient: dict[str, Any], now: datetime) -> ChangeResult:
        pid = str(patient.get("id") or "")
        key = mr_key(patient.get("identifier") or [], source_systems(source)) or f"{source.name}|Patient/{pid}"
        occurred = parse_instant((patient.get("meta") or {}).get("lastUpdated")) or now
        upsert_patient(u, key, patient, occurred.timestamp(), now.timestamp())
        if pid:
            self._cache(source.name, pid, key)
        return ChangeResult(note="patient stored")

    def prefetch(self, msg: InboundItem) -> None:
        """Read the message's Patient now (network), before the processor takes the write lock."""
        if not (msg.meta and '"kind":"resource"' in msg.meta and self.planner is not None):
            return
        try:
            source = self._source_for(msg)
            if source is None:
                return
            res = orjson.loads(bytes(msg.raw))
            if res.get("resourceType") in source.fhir.resource_types:
                self.resolve_patient(source, to_r4(res, source.fhir.version))
        except Exception:  # the locked pass tries again and reports
            return

    def _source_for(self, msg: InboundItem) -> Source | None:
        planner_sources = getattr(self.planner, "sources", None)
        return planner_sources().get(msg.source) if callable(planner_sources) else None

    def patient_key(self, u: UnitOfWork, source: Source, resource: dict[str, Any], now: datetime) -> str | None:
        """The patient key (see :func:`patient_key_from_reference`); a fetched Patient is stored too."""
        key, fetched = self.resolve_patient(source, resource)
        if key and fetched:
            occurred = parse_instant((fetched.get("meta") or {}).get("lastUpdated")) or now
            upsert_patient(u, key, fetched, occurred.timestamp(), now.timestamp())
            self._fresh.pop((source.name, str(fetched.get("id"))), None)
        return key

    def resolve_patient(self, source: Source, resource: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
        """(patient key, Patient read just now and not yet stored); network only, no database."""
        pid = patient_id(patient_reference(resource))
        if pid and (hit := self._patients.get((source.name, pid))):
            return hit, self._fresh.get((source.name, pid))
        if pid and (self._misses.get((source.name, pid), 0) > time.monotonic()
                    or self._down.get(source.name, 0) > time.monotonic()):
            return patient_key_from_reference(resource, source), None
        fetcher = self.planner.fetcher(source.name) if self.planner is not None else None
        fetched: dict[str, Any] = {}

        def fetch(p: str) -> dict[str, Any] | None:
            try:
                got = fetcher.patient(p) if fetcher is not None else None
            except Exception as exc:  # FetchError, connection errors: fall back to the source-local key
                log.warning("patient read failed", extra={"action": "fhir.patient_read_failed", "source": source.name,
                                                           "error_type": type(exc).__name__})
                # the server is down or refusing: stop asking it for a while (each read would wait for its retries)
                self._down[source.name] = time.monotonic() + self.down_s
                return None
            if got:
                fetched["p"] = got
            return got

        key = patient_key_from_reference(resource, source, fetch=fetch if fetcher is not None else None)
        if pid and key and (fetched or not key.endswith(f"|Patient/{pid}")):
            self._cache(source.name, pid, key)
            if fetched:
                self._fresh[(source.name, pid)] = fetched["p"]
        elif pid and fetcher is not None:
            self._misses[(source.name, pid)] = time.monotonic() + self.miss_ttl_s
            while len(self._misses) > self.cache_size:
                self._misses.pop(next(iter(self._misses)))
        return key, fetched.get("p")

    def _seed_previous(self, u: UnitOfWork, source: Source, r4: dict[str, Any], pkey: str | None, now: datetime) -> None:
        """First sighting of version N>1: read version N-1 from ``_history`` as the prior state."""
        try:
            raw_version = (r4.get("meta") or {}).get("versionId")
            if raw_version is None:  # int(None) raised TypeError: the same early return
                return
            version = int(raw_version)
        except (TypeError, ValueError):
            return
        fetcher = self.planner.fetcher(source.name) if self.planner is not None else None
        if version <= 1 or fetcher is None:
            return
        key = resolve_key(u, r4)
        if load_state(u, key) is not None:
            return
        try:
            prev = fetcher.vread(r4["resourceType"], str(r4["id"]), str(version - 1))
        except Exception as exc:
            log.warning("previous version read failed", extra={"action": "fhir.vread_failed", "source": source.name,
                                                                "error_type": type(exc).__name__})
            return
        if not prev:
            return
        prev = to_r4(prev, source.fhir.version)
        pm = prev.get("meta") or {}
        at = parse_instant(pm.get("lastUpdated")) or now
        save_state(u, StateRecord(
            key=key, resource_type=r4["resourceType"], patient_key=pkey, status=prev.get("status"),
            version=str(pm.get("versionId") or version - 1), last_updated=pm.get("lastUpdated"),
            occurred_at=at.timestamp(), resource=dumps(prev), source=source.name, deleted=False,
            updated_at=now.timestamp()), new=True)
