"""Reading ``%conditions`` (the Conditions a CarePlan ``addresses``) from the FHIR source.

:meth:`ConditionResolver.prefetch` reads them over the network (through the source's
:class:`~middleware.listeners.fhir_fetch.FhirFetcher`, so under the outbound policy and the
credential scope) *before* the processor takes the write lock, and caches each Condition for
``ttl_s``; :meth:`ConditionResolver.lookup`, called inside the transaction, only reads the
cache. A Condition the server says is gone (404/410) counts as read (it is left out). A read
that failed is remembered for ``error_ttl_s`` and, like a reference never read, makes the
plan's ``%conditions`` unresolved: rules that use it are "cannot be evaluated", not false.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable

from ..model import Conditions
from ..rules.conditions import condition_refs, contained_conditions

log = logging.getLogger("careloop.fhir.conditions")

Json = dict[str, Any]


class ConditionResolver:
    """Cached Condition reads per source. ``fetcher_for(source)`` gives the source's fetcher (or None)."""

    def __init__(self, fetcher_for: Callable[[str], Any], *, ttl_s: float = 300.0, error_ttl_s: float = 30.0,
                 down_s: float = 30.0,
                 max_entries: int = 50_000, clock: Callable[[], float] = time.monotonic,
                 convert: Callable[[Json, str], Json] | None = None,
                 is_down: Callable[[str], bool] = lambda source: False) -> None:
        self.fetcher_for = fetcher_for
        self.ttl_s = ttl_s
        self.error_ttl_s = error_ttl_s
        self.down_s = down_s
        self._down: dict[str, tuple[float, str]] = {}  # source -> (not asked until, why): one failure, not one per plan
        self.max_entries = max_entries
        self.clock = clock
        self.convert = convert
        self.is_down = is_down  # the handler's view: a Patient read of this source failed just now
        # (source, "Condition/<id>") -> (expires at, resource or None when gone, error or None)
        self._cache: OrderedDict[tuple[str, str], tuple[float, Json | None, str | None]] = OrderedDict()
        self.reads = 0

    @staticmethod
    def _target(ref: str, base_url: str | None) -> str | None:
        """``Condition/<id>`` for a relative reference or an absolute one on the source's base URL."""
        if base_url and ref.startswith(base_url.rstrip("/") + "/"):
            ref = ref[len(base_url.rstrip("/")) + 1:]
        parts = ref.split("/")
        if len(parts) in (2, 4) and parts[0] == "Condition" and parts[1] and (len(parts) == 2 or parts[2] == "_history"):
            return f"Condition/{parts[1]}"
        return None

    def _fresh(self, key: tuple[str, str]) -> tuple[Json | None, str | None] | None:
        hit = self._cache.get(key)
        if hit is None or hit[0] <= self.clock():
            return None
        return hit[1], hit[2]

    def _put(self, key: tuple[str, str], resource: Json | None, error: str | None) -> None:
        ttl = self.error_ttl_s if error else self.ttl_s
        self._cache[key] = (self.clock() + ttl, resource, error)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def prefetch(self, source: str, careplan: Json, version: str = "R4") -> None:
        """Read (network) every Condition the plan addresses that is not cached; never raises."""
        contained = contained_conditions(careplan)
        wanted = [r for r in condition_refs(careplan) if r and not (r.startswith("#") and r[1:] in contained)]
        if not wanted:
            return
        fetcher = self.fetcher_for(source)
        if fetcher is None:
            return
        base = getattr(fetcher, "base_url", None)
        for ref in wanted:
            target = self._target(ref, base)
            if target is None or self._fresh((source, target)) is not None:
                continue
            down = self._down.get(source)
            if down and down[0] > self.clock():
                self._put((source, target), None, f"not asked again yet after {down[1]}")
                continue
            if self.is_down(source):
                self._put((source, target), None, "not asked: the source failed another read just now")
                continue
            self.reads += 1
            try:
                got = fetcher.read("Condition", target.split("/", 1)[1])
            except Exception as exc:  # FetchError, refusals by the outbound policy, timeouts
                log.warning("condition read failed", extra={"action": "fhir.condition_read_failed", "source": source,
                                                             "error_type": type(exc).__name__})
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self._put((source, target), None, why)
                self._down[source] = (self.clock() + self.down_s, why)
                continue
            if got is not None and self.convert is not None:
                got = self.convert(got, version)
            self._put((source, target), got, None)

    def lookup(self, source: str, careplan: Json, base_url: str | None = None) -> Conditions:
        """``%conditions`` from the plan's contained Conditions and the cache (no network)."""
        contained = contained_conditions(careplan)
        items: list[Json] = []
        for i, ref in enumerate(condition_refs(careplan)):
            if ref.startswith("#") and ref[1:] in contained:
                items.append(contained[ref[1:]])
                continue
            target = self._target(ref, base_url) if ref else None
            if target is None:
                return Conditions(error=f"CarePlan.addresses[{i}] ({ref or 'no reference'}) is not a Condition "
                                        "reference careloop can read")
            hit = self._fresh((source, target))
            if hit is None:
                return Conditions(error=f"{target} has not been read from source {source}")
            resource, error = hit
            if error:
                return Conditions(error=f"{target} could not be read from source {source} ({error})")
            if resource is not None:
                items.append(resource)
        return Conditions(items=tuple(items))
