"""A FHIR server that cannot be read is not asked again for a while, and processing does its
Patient reads before taking the write lock (a slow server must not hold up ingest)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import orjson

from middleware.model import InboundItem
from middleware.pipeline.fhir_handler import FhirHandler
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]


class _Down:
    def __init__(self) -> None:
        self.calls = 0

    def patient(self, pid: str) -> dict[str, Any]:
        self.calls += 1
        raise ConnectionError("connection refused")


class _Planner:
    def __init__(self, fetcher: _Down, sources: Any) -> None:
        self._fetcher, self._sources = fetcher, sources

    def request_sweep(self, source: str, types: Sequence[str], arrival: str, reason: str) -> None: ...
    def request_read(self, source: str, rtype: str, rid: str, arrival: str) -> None: ...
    def fetcher(self, source: str) -> _Down:
        return self._fetcher
    def sources(self) -> Any:
        return self._sources


def _appt(i: int) -> dict[str, Any]:
    return {"resourceType": "Appointment", "id": f"a{i}", "status": "booked",
            "participant": [{"actor": {"reference": f"Patient/p{i}"}, "status": "accepted"}]}


def test_an_unreachable_server_is_not_asked_again_for_a_while() -> None:
    rs, _ = load_ruleset(REPO / "mappings")
    assert rs is not None
    down = _Down()
    h = FhirHandler(_Planner(down, rs.sources), down_s=30.0)
    source = rs.sources.by_name["default"]
    key, fetched = h.resolve_patient(source, _appt(1))
    assert key == "default|Patient/p1" and fetched is None and down.calls >= 1
    calls = down.calls
    for i in range(2, 20):  # other patients: no more reads while the source is marked down
        assert h.resolve_patient(source, _appt(i))[0] == f"default|Patient/p{i}"
    assert down.calls == calls
    h._down.clear()  # the window passed: the next patient is read again
    h.resolve_patient(source, _appt(50))
    assert down.calls > calls


def test_prefetch_reads_the_patient_of_a_stored_resource() -> None:
    rs, _ = load_ruleset(REPO / "mappings")
    assert rs is not None
    down = _Down()
    h = FhirHandler(_Planner(down, rs.sources))
    msg = InboundItem(id=1, source="default", channel="fhir", raw=orjson.dumps(_appt(7)),
                      meta=orjson.dumps({"kind": "resource", "arrival": "notification"}).decode())
    h.prefetch(msg)
    assert down.calls >= 1  # the read happened here, not under the processor's write lock
