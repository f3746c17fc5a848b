"""Kill the delivery worker between sending and recording (CARELOOP_FAULT=delivery.after_send:1),
restart it, and show: a de-duplicating destination (webhook-id) sees the delivery once; a
ledger-mode destination is never sent twice (the delivery becomes ``unconfirmed``)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from middleware.delivery.sink import SinkServer
from middleware.storage.tables import DeliveryRow, Disclosure, SendIntent

from support.delivery_pipeline import CONTACT_SECRET, WEBHOOK_SECRET, destination, make_pipeline, write_mappings

REPO = Path(__file__).resolve().parents[2]


def _worker(db_url: str, mappings: Path, fault: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOOK_SECRET": WEBHOOK_SECRET, "CARELOOP_CONTACT_KEY_SECRET": CONTACT_SECRET}
    env.pop("CARELOOP_FAULT", None)
    if fault:
        env["CARELOOP_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "middleware", "deliveries", "run", "--until-idle", "--lease-s", "1",
         "--database-url", db_url, "--mappings", str(mappings)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_crash_between_send_and_record(tmp_path: Path, db_url: str) -> None:
    with SinkServer([WEBHOOK_SECRET]) as sink:
        dests = [destination("hook", "webhook", webhook_url=sink.url + "/a"),
                 destination("hook-ledger", "webhook", webhook_url=sink.url + "/b", dedup="ledger")]
        p = make_pipeline(db_url, write_mappings(tmp_path, dests))
        p.ingest(["siu_s26_v251.hl7"])  # no-show → one trigger → one delivery per destination
        p.fire()
        rows = p.rows(DeliveryRow)
        assert sorted(d.destination for d in rows) == ["hook", "hook-ledger"]
        keys = {d.destination: d.idempotency_key for d in rows}

        first = _worker(p.db_url, p.mappings, "delivery.after_send:1")
        assert first.returncode == 137, first.stderr[-2000:]
        assert sorted(r["webhook_id"] for r in sink.received()) == sorted(keys.values())  # both were sent
        assert {d.status for d in p.rows(DeliveryRow)} == {"sending"}  # ... and nothing was recorded
        assert p.rows(Disclosure) == []
        assert [i.idempotency_key for i in p.rows(SendIntent)] == [keys["hook-ledger"]]

        time.sleep(1.2)  # the lease (1 s) expires: the restarted worker may reclaim
        second = _worker(p.db_url, p.mappings, None)
        assert second.returncode == 0, second.stderr[-2000:]

        got = sink.received()
        hook = [r for r in got if r["webhook_id"] == keys["hook"]]
        ledger = [r for r in got if r["webhook_id"] == keys["hook-ledger"]]
        # de-duplicating receiver: re-sent with the same webhook-id, dropped as a duplicate → seen once
        assert [r["duplicate"] for r in hook] == [False, True]
        assert len({r["webhook_id"] for r in hook if not r["duplicate"]}) == 1
        # ledger mode: never sent twice
        assert len(ledger) == 1
        status = {d.destination: d for d in p.rows(DeliveryRow)}
        assert status["hook"].status == "delivered"
        assert status["hook-ledger"].status == "unconfirmed"
        assert "not re-sent" in (status["hook-ledger"].last_error or "")
        disc = {d.destination: d for d in p.rows(Disclosure)}
        assert disc["hook"].outcome == "delivered" and len(disc["hook"].body_sha256) == 64
        assert disc["hook-ledger"].outcome == "unconfirmed"  # it may have left: the audit says so
        assert p.rows(SendIntent) == []
        # no PHI in the worker's logs
        for out in (first.stderr, second.stderr):
            assert "MRN000123" not in out and "TESTPATIENT" not in out
