"""Latency from a resource update on HAPI to the downstream (sink) call, over 20 updates.

Each update activates a new CarePlan of a new patient (``careplan-enrollment`` fires at once, no quiet hours in
the demo mappings). Measured: HAPI PUT issued -> the sink received the signed call (both
clocks are this machine's). The median is printed (``-s``) and kept under a generous bound.
"""
from __future__ import annotations

import statistics
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from middleware.sandbox import journeys, scenarios
from middleware.sandbox.hooks import FHIR_JSON, delete
from middleware.sandbox.local import CareloopApi

pytestmark = [pytest.mark.hapi, pytest.mark.timeout(600)]
UPDATES = 20


def test_median_update_to_sink_latency(careloop_factory: Any, hapi_client: Any) -> None:
    cl = careloop_factory()
    api = CareloopApi(cl.url)
    prefix = f"e2e-lat-{uuid.uuid4().hex[:6]}"
    ids = scenarios.prepare(hapi_client, api, cl.url + "/fhir/default", cl.token, prefix=prefix)
    try:
        samples = []
        for i in range(UPDATES):
            tag = uuid.uuid4().hex[:8]  # a patient per update: per-patient contact caps would hold the 3rd
            pat = journeys.patient(tag)
            hapi_client.put(f"Patient/{pat['id']}", json=pat, headers=FHIR_JSON).raise_for_status()
            cp = journeys.careplan(f"sbx-run-{tag}-cp{i}", pat, "active", datetime.now(timezone.utc))
            before = len(cl.sink.received())
            t0 = time.time()
            hapi_client.put(f"CarePlan/{cp['id']}", json=cp, headers=FHIR_JSON).raise_for_status()
            end = time.monotonic() + 30
            while len(cl.sink.received()) <= before:
                assert time.monotonic() < end, f"update {i}: no sink call within 30 s"
                time.sleep(0.005)
            got = cl.sink.received()[before]
            samples.append(datetime.fromisoformat(got["received_at"]).timestamp() - t0)
        med = statistics.median(samples)
        print(f"\nHAPI update -> sink call over {UPDATES} updates: median {med * 1000:.0f} ms, "
              f"min {min(samples) * 1000:.0f} ms, max {max(samples) * 1000:.0f} ms")
        assert med < 10.0
    finally:
        delete(hapi_client, ids)
