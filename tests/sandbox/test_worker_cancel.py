"""Root cause of "the second ``sandbox seed`` hangs forever" (issue 11, item 8).

The worker loops waited for their wake event with ``asyncio.wait_for(ev.wait(), t)``. On
Python 3.11 ``wait_for`` swallows a cancellation that arrives in the same loop tick as the
inner wait's result (CPython gh-86296, fixed in 3.12 by rebuilding ``wait_for`` on
``asyncio.timeout``): the cancelled loop went on waiting, so whoever cancelled it and
awaited it (the old sandbox backfill, ``LocalCareloop.stop``) waited forever. The second
seed hit it every time because its sweep found nothing new: it rang ``wake_process`` and
cancelled the workers at once.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from middleware.service import Runtime
from middleware.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _runtime(db_url: str) -> Runtime:
    return Runtime(Settings(database_url=db_url, mappings_dir=ROOT / "mappings",
                            worker_poll_interval_s=0.05))


def test_worker_loops_end_when_cancelled_as_they_are_woken(db_url: str) -> None:
    async def scenario() -> set[str]:
        rt = _runtime(db_url)
        tasks = await rt.start_workers()
        await asyncio.sleep(0.3)  # every loop is parked on its wake event
        rt.wake_process.set()
        rt.wake_schedule.set()
        rt.wake_deliver.set()
        rt.reconciler._kick()
        for t in tasks:
            t.cancel()
        done, pending = await asyncio.wait(tasks, timeout=5)
        names = {t.get_name() for t in pending}
        for t in pending:  # leave nothing behind, whatever the outcome
            t.cancel()
        await rt.delivery.aclose()
        rt.engine.dispose()
        return names

    still_running = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert not still_running, f"loops ignored cancellation: {sorted(still_running)}"
