"""``GET /metrics`` is Prometheus text with the documented series (docs/operations.md)."""
from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from middleware.cli.send import send_messages
from middleware.cli.sink import DEV_WEBHOOK_SECRET
from tests.support.hl7msgs import siu
from tests.support.server import start_in_process, wait_until

DOCUMENTED = {
    "careloop_ingest_messages", "careloop_inbox_commits", "careloop_processing_backlog", "careloop_processing_lag_seconds",
    "careloop_triggers_pending", "careloop_triggers_due", "careloop_scheduler_lag_seconds", "careloop_deliveries",
    "careloop_dead_letters", "careloop_destination_circuit_state", "careloop_processed_messages",
    "careloop_inbox_queue", "careloop_mllp_open_connections",
}


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(fam.name, []).append((s.labels, s.value))
    return out


def test_metrics_scrape_shows_ingest_lag_triggers_deliveries_and_circuits(tmp_path: Path, immediate_mappings: Path, sink, monkeypatch, db_url: str):
    monkeypatch.setenv("CARELOOP_WEBHOOK_URL", sink.url + "/hooks")
    monkeypatch.setenv("CARELOOP_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
    srv = start_in_process(db_url, immediate_mappings)
    try:
        msgs = [siu("S12", control="MX-1", appt="MX1", mrn="MRN070001"),
                siu("S26", control="MX-2", appt="MX1", mrn="MRN070001", status="Noshow"),
                siu("S12", control="MX-3", appt="MX3", mrn="MRN070003")]
        send_messages("127.0.0.1", srv.mllp_port, msgs)
        wait_until(lambda: len(sink.received()) == 1, what="one webhook")

        def settled():
            m = scrape(srv.http_url)
            return m if any(v == 1 and l.get("status") == "delivered" for l, v in m.get("careloop_deliveries", [])) else None
        m = wait_until(settled, what="delivered in /metrics")
        assert DOCUMENTED <= set(m), DOCUMENTED - set(m)
        ingested = {(l["source"], l["channel"], l["status"]): v for l, v in m["careloop_ingest_messages"] if "source" in l}
        assert ingested[("default", "mllp", "received")] == 3
        assert m["careloop_processing_backlog"][0][1] == 0
        assert m["careloop_processing_lag_seconds"][0][1] == 0
        assert dict((l["destination"], v) for l, v in m["careloop_dead_letters"])["webhook"] == 0
        circuit = dict((l["destination"], v) for l, v in m["careloop_destination_circuit_state"])
        assert circuit["webhook"] == 0  # closed
        # the reminders for the two bookings are pending, not yet due
        assert m["careloop_triggers_pending"][0][1] >= 1
        assert m["careloop_triggers_due"][0][1] == 0
        commits = sum(v for l, v in m["careloop_inbox_commits"] if not l)
        assert 1 <= commits <= 3
    finally:
        srv.stop()
