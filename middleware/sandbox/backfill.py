"""Backfill a careloop database from the sandbox without firing anything.

Uses careloop's own reconciler (``pipeline/reconcile.py``): the high-water marks of the
``default`` source are set to the epoch, one sweep reads every Appointment, Encounter and
CarePlan into the inbox with ``arrival="backfill"`` (rules skip backfilled events unless a
rule opts in with ``include_backfill``), and the processor applies them. Afterwards the marks
stand at the newest ``lastUpdated`` read, so later sweeps start from there.

TODO(issue 3): delegate to ``careloop backfill --source default`` once it lands.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sqlmodel import Session, col, func, select

SOURCE = "default"


def backfill(database_url: str, fhir_base: str, *, mappings: Path = Path("mappings"), deadline_s: float = 300) -> dict[str, int]:
    """Read the sandbox into ``database_url``; return counts (resources, deletes, stored, processed)."""
    return asyncio.run(_backfill(database_url, fhir_base, mappings, deadline_s))


async def _backfill(database_url: str, fhir_base: str, mappings: Path, deadline_s: float) -> dict[str, int]:
    from ..pipeline.fhir_state import hwm_key, kv_set
    from ..service import Runtime
    from ..settings import Settings
    from ..storage.tables import InboundMessage

    before = os.environ.get("CARELOOP_FHIR_BASE_URL")
    os.environ["CARELOOP_FHIR_BASE_URL"] = fhir_base  # the default source's base (mappings/sources.yaml)
    try:
        rt = Runtime(Settings(database_url=database_url, mappings_dir=mappings, worker_poll_interval_s=0.05))
    finally:
        if before is None:
            os.environ.pop("CARELOOP_FHIR_BASE_URL", None)
        else:
            os.environ["CARELOOP_FHIR_BASE_URL"] = before
    src = rt.sources.get(SOURCE)
    types = list(src.fhir.resource_types) if src else ["Appointment", "Encounter", "CarePlan"]
    tasks = await rt.start_workers()
    try:
        with Session(rt.engine) as s:
            for t in types:
                kv_set(s, hwm_key(SOURCE, t), {"at": "1970-01-01T00:00:00Z"}, time.time())
            s.commit()
        rep = await rt.reconciler.sweep(SOURCE, types, arrival="backfill", reason="sandbox seed")
        if rep.errors:
            raise RuntimeError("backfill failed: " + "; ".join(rep.errors))
        rt.wake_process.set()
        end = time.monotonic() + deadline_s
        while True:
            with Session(rt.engine) as s:
                left = s.exec(select(func.count()).select_from(InboundMessage).where(
                    col(InboundMessage.status) == "received")).one()
            if not left:
                break
            if time.monotonic() > end:
                raise RuntimeError(f"backfill: {left} inbox rows still unprocessed after {deadline_s:.0f}s")
            await asyncio.sleep(0.1)
        return {"resources": rep.resources, "deletes": rep.deletes, "stored": rep.stored}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rt.delivery.aclose()
        rt.engine.dispose()
