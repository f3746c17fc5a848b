"""Time the FHIR R4 type check of every FHIRPath in mappings/ (parse trees shared with the syntax check).

    PYTHONPATH=. .venv/bin/python bench/check_fhirpath.py
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from middleware.rules import check
from middleware.rules.check import TypeContext
from middleware.rules.load import load_ruleset


def main() -> None:
    rs, _ = load_ruleset(Path("mappings"))
    assert rs is not None
    exprs: list[tuple[TypeContext, str]] = []
    for cr in rs.rules:
        r = cr.rule
        tc = TypeContext.for_rule(r.on, [*r.emit.payload, "purpose"])
        for e in [r.where, r.when.at, r.when.not_after, *r.emit.payload.values(), r.dedup.key if r.dedup else None]:
            if e:
                exprs.append((tc, e))
        for u in r.unless:
            if u.where:
                exprs.append((tc.cancelling(u.on), u.where))
        if r.wait_for and r.wait_for.where:
            exprs.append((tc.cancelling(r.wait_for.events), r.wait_for.where))
    times = []
    for _ in range(7):
        check._check_cached.cache_clear()
        t = time.perf_counter()
        for tc, e in exprs:
            tc.check(e)
        times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    print(f"{len(exprs)} expressions type-checked in {dt * 1000:.0f} ms ({dt / len(exprs) * 1e3:.2f} ms each, median of 7)")


if __name__ == "__main__":
    main()
