"""Every network wait has a deadline and says what it waited for (issue 11, item 3).

Each test points a real client at a real loopback server that accepts and never answers,
half-closes, or drips its body (``hostile.py``), and checks that the wait ends within its
deadline with a message naming what it waited for and for how long.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from middleware.listeners.fhir_fetch import FetchError, FetchTimeout, FhirFetcher

from support.hostile import HostileServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["silent", "drip"])
def test_fhir_read_ends_at_its_deadline_and_names_the_wait(mode: str) -> None:
    with HostileServer(mode) as srv:  # type: ignore[arg-type]
        f = FhirFetcher(srv.url + "/fhir", timeout_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(FetchTimeout) as ei:
            f.read("Appointment", "a1")
        took = time.monotonic() - t0
    assert took < 1.8, f"waited {took:.1f} s for a 1 s deadline"
    msg = str(ei.value)
    assert "timed out after 1 s" in msg and srv.url + "/fhir" in msg and "GET Appointment/a1" in msg


def test_fhir_read_from_a_half_closing_server_says_what_failed() -> None:
    with HostileServer("half-close") as srv:
        f = FhirFetcher(srv.url + "/fhir", timeout_s=2.0)
        t0 = time.monotonic()
        with pytest.raises(FetchError) as ei:
            f.search("Appointment", {"_lastUpdated": "gt2026-01-01"}).__next__()
        took = time.monotonic() - t0
    assert took < 2.5
    msg = str(ei.value)
    assert srv.url + "/fhir" in msg and "GET Appointment (search)" in msg and "2026-01-01" not in msg


def test_search_paging_ends_at_the_callers_deadline() -> None:
    with HostileServer("silent") as srv:
        f = FhirFetcher(srv.url + "/fhir", timeout_s=30.0)
        t0 = time.monotonic()
        with pytest.raises(FetchTimeout):
            list(f.search("Encounter", {"_count": "50"}, deadline=time.monotonic() + 0.5))
    assert time.monotonic() - t0 < 1.2


def test_reconciler_sweep_ends_at_the_sweep_deadline(tmp_path: Path) -> None:
    from middleware.config.sources import Source
    from middleware.pipeline.reconcile import Reconciler
    from middleware.rules.load import load_ruleset
    from middleware.storage.db import init_db, make_engine
    from middleware.storage.inbox import InboxWriter

    rs, _ = load_ruleset(ROOT / "mappings")
    assert rs is not None
    with HostileServer("silent") as srv:
        base = srv.url + "/fhir"
        src = rs.sources.get("default")
        assert src is not None
        fhir_src: Source = src.model_copy(update={"fhir": src.fhir.model_copy(update={"base_url": base})})
        sources = type(rs.sources)([fhir_src])
        engine = make_engine(f"sqlite:///{tmp_path}/c.db")
        init_db(engine)
        rec = Reconciler(engine, InboxWriter(engine), lambda: sources, fetch_timeout_s=30.0, sweep_timeout_s=0.8)
        t0 = time.monotonic()
        rep = asyncio.run(rec.sweep("default", ["Appointment", "Encounter"]))
        took = time.monotonic() - t0
        engine.dispose()
    assert took < 1.6, f"sweep took {took:.1f} s for a 0.8 s deadline"
    assert len(rep.errors) == 2
    assert all("sweep of source default timed out after 0.8 s" in e and base in e for e in rep.errors)
