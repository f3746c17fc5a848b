"""Time the FHIR R4 type check of every FHIRPath in mappings/ (parse trees shared with the syntax check).

    PYTHONPATH=. .venv/bin/python bench/check_fhirpath.py
"""
import time
from pathlib import Path
from middleware.rules.load import load_ruleset
from middleware.rules.check import TypeContext
rs, _ = load_ruleset(Path("mappings"))
exprs = []
for cr in rs.rules:
    r = cr.rule
    tc = TypeContext.for_rule(r.on, [*r.emit.payload, "purpose"])
    for e in [r.where, r.when.at, r.when.not_after, *(r.emit.payload.values()), r.dedup.key if r.dedup else None]:
        if e: exprs.append((tc, e))
    for u in r.unless:
        if u.where: exprs.append((tc.cancelling(u.on), u.where))
    if r.wait_for and r.wait_for.where: exprs.append((tc.cancelling(r.wait_for.events), r.wait_for.where))
from middleware.rules import check as C
import statistics
ts = []
for _ in range(7):
    C._check_cached.cache_clear()
    t = time.perf_counter()
    for tc, e in exprs: tc.check(e)
    ts.append(time.perf_counter() - t)
dt = statistics.median(ts)
print(f"{len(exprs)} expressions type-checked (parse trees shared with the syntax check) in {dt*1000:.0f} ms ({dt/len(exprs)*1e3:.2f} ms each)")
