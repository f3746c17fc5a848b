"""Reconciliation: find every change a FHIR server made, notified or not.

Per source and resource type a high-water mark (the newest ``meta.lastUpdated`` seen,
kept in ``kv``) drives two reads, both from ``hwm - overlap`` because commit order is not
``lastUpdated`` order (a transaction that started earlier may commit later):

* ``GET {Type}?_lastUpdated=gt{since}&_sort=_lastUpdated&_count=200`` (paged) for creates
  and updates (a search never returns deletes);
* ``GET {Type}/_history?_since={since}`` for deletes, and for the intermediate versions a
  search cannot show (applied oldest first, so each transition is seen).

What is found is stored in the inbox as ``fhir`` rows (``meta.kind`` resource/delete,
``meta.arrival`` reconcile, or notification for a sweep a notification asked for) and
applied by the processor, so state is written by one worker only and every fetch is
durable before the mark moves. Rows whose ``(Type, id, version)`` the inbox already holds
are skipped; the processor ignores versions it already applied.

A sweep runs at start-up and every ``reconcile_interval_s`` for ``kind: fhir`` sources; for
any source with a ``base_url`` when a payload-less / ``empty`` notification or an
event-number gap asks for it (requests are also kept in ``kv`` until done, so a crash
does not lose them); ``id-only`` notifications queue single reads. Without a mark the
sweep starts at *now* (loading history is ``careloop backfill``'s job).

Deadlines: each GET ends by ``fetch_timeout_s`` and a whole sweep by ``sweep_timeout_s``
(settings ``fhir_request_timeout_s`` / ``fhir_sweep_timeout_s``); a sweep that runs out
records an error naming the source, the type and the wait, keeps the old mark, and the
next sweep tries again.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence

import orjson
from sqlalchemy.engine import Engine

from ..config.sources import Source, Sources
from .fhir_state import (
    clear_pending, fhir_instant, hwm_key, kv_get, kv_prefix, kv_set, parse_instant, reconcile_key,
)
from ..storage.inbox import InboundRecord, InboxWriter
from ..storage.sql import unit
from ..storage.queries.ingest import INBOX_HELD
from ..listeners.fhir_fetch import FetchError, FetchTimeout, FhirFetcher

log = logging.getLogger("careloop.fhir.reconcile")
Json = dict[str, Any]
PAGE = 200


@dataclass
class SweepReport:
    source: str
    types: list[str]
    arrival: str
    reason: str
    resources: int = 0
    deletes: int = 0
    stored: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def history_items(entries: Iterable[Json], rtype: str) -> list[tuple[str, Json]]:
    """History entries -> ``("resource", resource)`` / ``("delete", {"id", "version", "last_updated"})``,
    oldest first, so every intermediate version (and its transition) is applied in order (pure)."""
    items: list[tuple[str, Json, str, int]] = []
    for e in entries:
        res = e.get("resource")
        if isinstance(res, dict) and res.get("resourceType") == rtype:
            m = res.get("meta") or {}
            items.append(("resource", res, str(m.get("lastUpdated") or ""), _int(m.get("versionId"))))
    for d in delete_entries(entries, rtype):
        items.append(("delete", d, str(d.get("last_updated") or ""), _int(d.get("version"))))
    items.sort(key=lambda x: (x[2], x[3]))
    return [(kind, body) for kind, body, _, _ in items]


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def delete_entries(entries: Iterable[Json], rtype: str) -> list[Json]:
    """History entries that are deletes -> ``{"id", "version", "last_updated"}`` (pure)."""
    out = []
    for e in entries:
        req, resp = e.get("request") or {}, e.get("response") or {}
        is_delete = req.get("method") == "DELETE" or str(resp.get("status", "")).startswith("410") or (
            not e.get("resource") and not req)
        if not is_delete:
            continue
        url = str(req.get("url") or e.get("fullUrl") or "")
        parts = [p for p in url.split("?")[0].split("/") if p]
        version = None
        if "_history" in parts:
            i = parts.index("_history")
            version = parts[i + 1] if i + 1 < len(parts) else None
            parts = parts[:i]
        if len(parts) < 2 or parts[-2] != rtype:
            continue
        etag = str(resp.get("etag") or "")
        if version is None and etag:
            version = etag.replace('W/', '').strip('"') or None
        out.append({"id": parts[-1], "version": version, "last_updated": resp.get("lastModified")})
    return out


class Reconciler:
    """Runs sweeps and reads for FHIR sources; implements the handler's ``FetchPlanner``."""

    def __init__(
        self,
        engine: Engine,
        writer: InboxWriter,
        sources: Callable[[], Sources],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        fetcher_factory: Callable[[Source], Any] | None = None,
        periodic: Callable[[Source], bool] = lambda s: s.kind == "fhir",
        fetch_timeout_s: float = 10.0,
        sweep_timeout_s: float = 300.0,
    ) -> None:
        self.engine = engine
        self.sweep_timeout_s = sweep_timeout_s
        if fetcher_factory is None:
            fetcher_factory = lambda src: FhirFetcher.for_source(src, timeout_s=fetch_timeout_s)  # noqa: E731
        self.writer = writer
        self.sources = sources
        self.clock = clock
        self.fetcher_factory = fetcher_factory
        self.periodic = periodic
        self._fetchers: dict[tuple[str, str], Any] = {}
        self._sweeps: dict[tuple[str, str], tuple[str, str]] = {}  # (source, type) -> (arrival, reason)
        self._reads: dict[tuple[str, str, str], str] = {}
        self._wake: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reports: list[SweepReport] = []
        self.idle = asyncio.Event()

    # -- planner (called from the processor thread) --------------------------------------
    def fetcher(self, source: str) -> Any:
        src = self.sources().get(source)
        if src is None or not src.fhir.base_url:
            return None
        k = (source, src.fhir.base_url)
        if k not in self._fetchers:
            self._fetchers[k] = self.fetcher_factory(src)
        return self._fetchers[k]

    def request_sweep(self, source: str, types: Sequence[str], arrival: str, reason: str) -> None:
        for t in types:
            old = self._sweeps.get((source, t))
            # a reconcile request outranks a notification one for the same type
            if old is None or (arrival == "reconcile" and old[0] != "reconcile"):
                self._sweeps[(source, t)] = (arrival, reason)
        self._kick()

    def request_read(self, source: str, rtype: str, rid: str, arrival: str) -> None:
        self._reads[(source, rtype, rid)] = arrival
        self._kick()

    def _kick(self) -> None:
        if self.loop is not None and self._wake is not None:
            self.loop.call_soon_threadsafe(self._wake.set)

    # -- loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Start-up sweep, then requests as they come and periodic sweeps when due."""
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._load_pending()
        due: dict[str, float] = {}
        for src in self.sources().items:
            if self.periodic(src) and src.fhir.base_url:
                self.request_sweep(src.name, src.fhir.resource_types, "reconcile", "startup")
        while True:
            await self._drain()
            now = time.monotonic()
            for src in self.sources().items:
                if not (self.periodic(src) and src.fhir.base_url):
                    continue
                if src.name not in due:
                    due[src.name] = now + src.fhir.reconcile_interval_s
                elif now >= due[src.name]:
                    due[src.name] = now + src.fhir.reconcile_interval_s
                    self.request_sweep(src.name, src.fhir.resource_types, "reconcile", "interval")
            if self._sweeps or self._reads:
                continue
            self.idle.set()
            timeout = max(0.05, min(due.values(), default=now + 60) - now)
            try:  # asyncio.timeout: wait_for can swallow a cancel on 3.11 (CPython gh-86296)
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            self.idle.clear()

    def _load_pending(self) -> None:
        with unit(self.engine) as u:
            pending = kv_prefix(u, "fhir.pending.")
        for key, val in pending.items():
            source, _, rtype = key[len("fhir.pending."):].rpartition(".")
            self.request_sweep(source, [rtype], val.get("arrival", "reconcile"), val.get("reason", "pending"))

    async def _drain(self) -> None:
        while self._reads:
            (source, rtype, rid), arrival = self._reads.popitem()
            try:
                await self.read(source, rtype, rid, arrival)
            except Exception as exc:  # the next sweep covers it
                log.warning("read failed", extra={"action": "fhir.read_failed", "source": source, "resource_type": rtype,
                                                  "error_type": type(exc).__name__})
        groups: dict[tuple[str, str, str], list[str]] = {}
        while self._sweeps:
            (source, rtype), (arrival, reason) = self._sweeps.popitem()
            groups.setdefault((source, arrival, reason), []).append(rtype)
        for (source, arrival, reason), types in groups.items():
            await self.sweep(source, sorted(types), arrival, reason)

    # -- operations ---------------------------------------------------------------------
    async def read(self, source: str, rtype: str, rid: str, arrival: str) -> int:
        """Read one resource and store it (or its deletion); returns rows stored."""
        f = self.fetcher(source)
        if f is None:
            return 0
        res = await asyncio.to_thread(f.read, rtype, rid)
        if res is None:
            return await self._store(source, [("delete", {"id": rid, "version": None, "last_updated": None})], rtype, arrival)
        return await self._store(source, [("resource", res)], rtype, arrival)

    async def sweep(self, source: str, types: Sequence[str], arrival: str = "reconcile", reason: str = "manual") -> SweepReport:
        """Sweep ``types`` of ``source`` from each high-water mark (see the module docstring)."""
        rep = SweepReport(source, list(types), arrival, reason)
        src = self.sources().get(source)
        f = self.fetcher(source)
        started = self.clock()
        if src is None or f is None:
            rep.errors.append("no base_url configured")
            return rep
        overlap = timedelta(seconds=src.fhir.reconcile_overlap_s)
        end = time.monotonic() + self.sweep_timeout_s
        for rtype in types:
            try:
                if time.monotonic() >= end:
                    raise FetchTimeout(self._sweep_timed_out(source, rtype))
                with unit(self.engine) as u:
                    mark = parse_instant((kv_get(u, hwm_key(source, rtype)) or {}).get("at"))
                since = fhir_instant((mark or started) - overlap)
                query = {"_lastUpdated": f"gt{since}", "_sort": "_lastUpdated", "_count": str(PAGE)}
                found = await asyncio.to_thread(lambda: list(f.search(rtype, query, deadline=end)))  # noqa: B023 (awaited here)
                hist = await asyncio.to_thread(
                    lambda: history_items(list(f.history(rtype, since, PAGE, deadline=end)), rtype))  # noqa: B023 (awaited here)
                items = hist + [("resource", r) for r in found]  # history in order first, then current versions
                deletes = [d for k, d in hist if k == "delete"]
                rep.resources += len(found)
                rep.deletes += len(deletes)
                stored = await self._store(source, items, rtype, arrival)
                rep.stored += stored
                rep.skipped += len(items) - stored
                stamps = [parse_instant((r.get("meta") or {}).get("lastUpdated")) for r in found]
                stamps += [parse_instant(d.get("last_updated")) for d in deletes]
                newest = max([t for t in stamps if t is not None] + [mark or started])
                with unit(self.engine, write=True) as u:
                    kv_set(u, hwm_key(source, rtype), {"at": fhir_instant(newest)}, time.time())
                    clear_pending(u, source, rtype, started.timestamp())
            except (FetchError, OSError) as exc:
                if isinstance(exc, FetchTimeout) and time.monotonic() >= end:
                    exc = FetchTimeout(self._sweep_timed_out(source, rtype))
                rep.errors.append(f"{rtype}: {type(exc).__name__}: {exc}")
                log.warning("sweep failed", extra={"action": "fhir.sweep_failed", "source": source, "resource_type": rtype,
                                                   "error_type": type(exc).__name__})
        with unit(self.engine, write=True) as u:
            kv_set(u, reconcile_key(source), {
                "at": self.clock().timestamp(), "types": list(types), "arrival": arrival, "reason": reason,
                "resources": rep.resources, "deletes": rep.deletes, "stored": rep.stored, "errors": rep.errors[:5],
            }, time.time())
        log.info("sweep done", extra={"action": "fhir.swept", "source": source, "count": rep.stored, "status": reason})
        self.reports.append(rep)
        del self.reports[:-100]
        return rep

    def _sweep_timed_out(self, source: str, rtype: str) -> str:
        f = self.fetcher(source)
        return (f"sweep of source {source} timed out after {self.sweep_timeout_s:g} s waiting for the FHIR server "
                f"{getattr(f, 'base_url', '?')} to answer the {rtype} search/_history pages")

    async def _store(self, source: str, items: list[tuple[str, Json]], rtype: str, arrival: str) -> int:
        """Store fetched resources/deletes in the inbox in order, skipping versions already held there."""
        recs: list[InboundRecord] = []
        for kind, body in items:
            if kind == "resource":
                v = (body.get("meta") or {}).get("versionId")
                meta = {"kind": "resource", "arrival": arrival, "resource_type": body.get("resourceType"),
                        "id": body.get("id"), "version": v, "method": "GET"}
                dedup = f"fhir|{source}|{body.get('resourceType')}/{body.get('id')}/_history/{v}" if v else None
                recs.append(self._record(source, orjson.dumps(body), meta, dedup))
            else:
                meta = {"kind": "delete", "arrival": arrival, "resource_type": rtype, "id": body["id"],
                        "version": body["version"], "last_updated": body["last_updated"], "method": "GET"}
                dedup = f"fhir|{source}|{rtype}/{body['id']}/_history/{body['version']}|DELETE" if body["version"] else None
                recs.append(self._record(source, b"", meta, dedup))
        held = self._held([r.dedup_key for r in recs if r.dedup_key])
        todo, seen = [], set()
        for r in recs:
            if r.dedup_key is not None and (r.dedup_key in held or r.dedup_key in seen):
                continue
            seen.add(r.dedup_key)
            todo.append(r)
        for i in range(0, len(todo), 500):
            results = await asyncio.gather(*(self.writer.store(r) for r in todo[i:i + 500]))
            if not all(x.stored for x in results):
                raise OSError("inbox did not store the fetched resources")
        return len(todo)

    def _record(self, source: str, raw: bytes, meta: Json, dedup: str | None) -> InboundRecord:
        return InboundRecord(source=source, channel="fhir", raw=raw, sha256=hashlib.sha256(raw).hexdigest(),
                             status="received", dedup_key=dedup, message_type=f"{meta['kind']}:{meta['resource_type']}",
                             meta=orjson.dumps(meta).decode())

    def _held(self, keys: list[str]) -> set[str]:
        out: set[str] = set()
        with unit(self.engine) as u:
            for i in range(0, len(keys), 500):
                out.update(k for (k,) in u.all(INBOX_HELD, keys=keys[i:i + 500]) if k is not None)
        return out
