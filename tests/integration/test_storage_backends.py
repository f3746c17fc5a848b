"""The same journey on the backend under test (SQLite, or a real PostgreSQL server in that pass)."""
from __future__ import annotations

from pathlib import Path

import pytest

from middleware.cli.send import send_messages
from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.delivery.sink import SinkServer
from middleware.storage.db import make_engine, synchronous_setting
from tests.support.hl7msgs import siu
from tests.support.server import start_in_process, wait_until


@pytest.fixture
def no_quiet(pipeline_mappings: Path) -> Path:
    return pipeline_mappings


def test_journey_on_each_backend(db_url: str, no_quiet: Path, monkeypatch: pytest.MonkeyPatch):
    with SinkServer([DEV_WEBHOOK_SECRET]) as sink:
        monkeypatch.setenv("CARELOOP_WEBHOOK_URL", sink.url + "/hooks")
        monkeypatch.setenv("CARELOOP_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
        srv = start_in_process(db_url, no_quiet)
        try:
            acks = send_messages("127.0.0.1", srv.mllp_port, [
                siu("S12", control="PG-1", appt="FP1", mrn="MRN000901"),
                siu("S26", control="PG-2", appt="FP1", mrn="MRN000901", status="Noshow"),
                siu("S26", control="PG-2", appt="FP1", mrn="MRN000901", status="Noshow"),
            ])
            assert acks[1] == acks[2]
            wait_until(lambda: [r for r in sink.received() if r["body"]["type"] == "appointment_noshow"], what="webhook")
            types = [e["type"] for e in srv.get("/api/events")["items"]]
            assert types == ["appointment.noshow", "appointment.booked"]
            assert srv.get("/api/messages?status=duplicate")["items"]
        finally:
            srv.stop()


def test_durability_settings(db_url: str):
    engine = make_engine(db_url)
    try:
        setting = synchronous_setting(engine)
        assert setting in ("FULL", "synchronous_commit=on")
    finally:
        engine.dispose()
