"""A restart of `careloop serve` in the middle of a run loses nothing: every ACKed
message is stored and processed once, pending triggers survive."""
from __future__ import annotations

import signal
from pathlib import Path

import httpx

from middleware.cli.send import send_messages
from tests.support.hl7msgs import siu
from tests.support.server import start_subprocess, wait_until


def msa_code(ack: bytes) -> str:
    return next(s for s in ack.decode().split("\r") if s.startswith("MSA")).split("|")[1]


def test_sigkill_mid_run_then_restart_loses_nothing(tmp_path: Path, mappings_dir: Path, db_url: str):
    db = db_url
    first = start_subprocess(db, mappings_dir, tmp_path, env={"CARELOOP_WEBHOOK_URL": "http://127.0.0.1:9/none"})
    batch1 = [siu("S12", control=f"K1-{i}", appt=f"FK{i}") for i in range(30)]
    acks1 = send_messages("127.0.0.1", first.mllp_port, batch1)
    assert all(msa_code(a) == "AA" for a in acks1)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)

    second = start_subprocess(db, mappings_dir, tmp_path, env={"CARELOOP_WEBHOOK_URL": "http://127.0.0.1:9/none"},
                              mllp_port=first.mllp_port)
    try:
        batch2 = [siu("S12", control=f"K2-{i}", appt=f"FL{i}") for i in range(10)]
        # resending the first batch (an engine that never saw our ACKs would) must not double anything
        acks2 = send_messages("127.0.0.1", second.mllp_port, batch1[:5] + batch2)
        assert all(msa_code(a) == "AA" for a in acks2)

        def all_processed():
            items = httpx.get(second.http_url + "/api/messages?status=processed&limit=1000").json()["items"]
            return len(items) == 40
        wait_until(all_processed, 30, what="40 distinct messages processed")
        dups = httpx.get(second.http_url + "/api/messages?status=duplicate").json()["items"]
        assert len(dups) == 5
        booked = httpx.get(second.http_url + "/api/events?type=appointment.booked&limit=1000").json()["items"]
        assert len(booked) == 40
        assert len({e["resource_key"] for e in booked}) == 40
    finally:
        second.terminate()
