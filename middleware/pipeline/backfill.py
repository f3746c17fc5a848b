"""Backfill: load the current state of a FHIR source's resources without transition triggers.

Reads every Appointment / Encounter / CarePlan (``search`` with ``_include`` of the patient,
or Bulk Data ``$export`` when the CapabilityStatement advertises it and ``use_export`` allows)
and applies each with ``arrival="backfill"``: events are recorded, so every status is known,
but rules ignore them unless they opt in with ``include_backfill: true``, and backfilled
events cancel nothing. One transaction per page. The reconciliation high-water mark of each
type moves to the newest ``lastUpdated`` seen, so reconciliation continues from there.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlencode

from sqlalchemy.engine import Engine
from ..storage.sql import unit

from ..config.sources import Source
from ..listeners.fhir_fetch import FetchTimeout
from .fhir_handler import FhirHandler
from .fhir_state import fhir_instant, hwm_key, kv_get, kv_set, parse_instant
from ..rules.load import RuleSet

log = logging.getLogger("careloop.fhir.backfill")
Json = dict[str, Any]
PATIENT_PARAM = {"Appointment": "patient", "Encounter": "subject", "CarePlan": "subject"}


@dataclass
class BackfillReport:
    source: str
    method: str = "search"
    resources: int = 0
    patients: int = 0
    events: int = 0
    triggers: int = 0
    seconds: float = 0.0
    per_type: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


def _pages_by_search(fetcher: Any, rtype: str, page: int, deadline: float | None = None) -> Iterable[list[Json]]:
    params = {"_count": str(page), "_sort": "_lastUpdated"}
    if rtype in PATIENT_PARAM:
        params["_include"] = f"{rtype}:{PATIENT_PARAM[rtype]}"
    pages = fetcher.pages(f"{rtype}?{urlencode(params)}", deadline) if deadline is not None else \
        fetcher.pages(f"{rtype}?{urlencode(params)}")
    for bundle in pages:
        yield [e["resource"] for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]


def backfill(
    engine: Engine,
    rs: RuleSet,
    source: Source,
    fetcher: Any,
    types: Sequence[str] | None = None,
    *,
    use_export: bool | None = None,
    page: int = 500,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    deadline_s: float | None = None,
) -> BackfillReport:
    """Load current state (see the module docstring); returns counts and the time taken.

    ``use_export``: ``None`` = use ``$export`` if advertised, ``False`` = always search.
    ``deadline_s`` bounds the whole search paging (each page also has the fetcher's own
    timeout). Fetch errors propagate (:class:`~middleware.listeners.fhir_fetch.FetchError`;
    ``FetchTimeout`` naming the server, the request and the wait when a deadline passes).
    """
    deadline = time.monotonic() + deadline_s if deadline_s is not None else None
    types = list(types or source.fhir.resource_types)
    rep = BackfillReport(source.name)
    handler = FhirHandler(planner=None)
    t0 = time.perf_counter()
    newest: dict[str, datetime] = {}
    seen_patients: set[tuple[str, str]] = set()
    if use_export is not False and fetcher.supports_export():
        rep.method = "$export"
        everything = list(fetcher.export([*types, "Patient"]))
        pats = [r for r in everything if r.get("resourceType") == "Patient"]
        rest = [r for r in everything if r.get("resourceType") in types]
        batches: Iterable[list[Json]] = [pats] + [rest[i:i + page] for i in range(0, len(rest), page)]
    else:
        batches = (b for t in types for b in _pages_by_search(fetcher, t, page, deadline))
    try:
        _apply_batches(engine, rs, source, handler, batches, types, rep, newest, seen_patients, clock)
    except FetchTimeout as exc:
        if deadline is None or time.monotonic() < deadline:
            raise
        raise FetchTimeout(f"backfill of source {source.name} timed out after {deadline_s:g} s paging "
                           f"{getattr(fetcher, 'base_url', 'the FHIR server')}: {exc}") from exc
    with unit(engine, write=True) as u:
        for rtype, at in newest.items():
            old = parse_instant((kv_get(u, hwm_key(source.name, rtype)) or {}).get("at"))
            if old is None or at > old:
                kv_set(u, hwm_key(source.name, rtype), {"at": fhir_instant(at)}, time.time())
    rep.seconds = time.perf_counter() - t0
    log.info("backfill done", extra={"action": "fhir.backfilled", "source": source.name, "count": rep.resources,
                                     "duration_ms": round(rep.seconds * 1000)})
    return rep


def _apply_batches(engine: Engine, rs: RuleSet, source: Source, handler: FhirHandler, batches: Iterable[list[Json]],
                   types: list[str], rep: BackfillReport, newest: dict[str, datetime],
                   seen_patients: set[tuple[str, str]], clock: Callable[[], datetime]) -> None:
    """Apply each fetched page in its own transaction (patients first), counting into ``rep``."""
    for batch in batches:
        now = clock()
        with unit(engine, write=True) as u:
            for r in sorted(batch, key=lambda r: r.get("resourceType") != "Patient"):  # patients first
                rtype = r.get("resourceType")
                if rtype == "Patient":
                    pv = (str(r.get("id")), str((r.get("meta") or {}).get("versionId")))
                    if pv not in seen_patients:  # _include repeats a patient on every page
                        seen_patients.add(pv)
                        handler.apply_resource(u, source, r, "backfill", now, None, rs)
                        rep.patients += 1
                    continue
                if rtype not in types:
                    continue
                res = handler.apply_resource(u, source, r, "backfill", now, None, rs)
                rep.resources += 1
                rep.per_type[rtype] = rep.per_type.get(rtype, 0) + 1
                rep.events += len(res.events)
                rep.triggers += res.triggers
                at = parse_instant((r.get("meta") or {}).get("lastUpdated"))
                if at and (rtype not in newest or at > newest[rtype]):
                    newest[rtype] = at
