"""MLLP in, webhook out, over real loopback sockets: ACK semantics, storage before ACK,
normalization, events, rules, signed delivery to a real local receiver."""
from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import hl7.client
import pytest

from middleware.cli.send import send_messages
from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.delivery.sink import SinkServer
from middleware.listeners.mllp_framing import frame
from tests.conftest import hl7_fixture
from tests.support.hl7msgs import adt, siu
from tests.support.server import start_in_process, wait_until


def msa(ack: bytes) -> list[str]:
    seg = next(s for s in ack.decode("latin-1").split("\r") if s.startswith("MSA"))
    return seg.split("|")


def err(ack: bytes) -> str | None:
    return next((s for s in ack.decode("latin-1").split("\r") if s.startswith("ERR")), None)


@pytest.fixture
def quiet_free_mappings(pipeline_mappings: Path) -> Path:
    return pipeline_mappings


@pytest.fixture
def sink():
    with SinkServer([DEV_WEBHOOK_SECRET]) as s:
        yield s


@pytest.fixture
def server(tmp_path, quiet_free_mappings, sink, monkeypatch, db_url):
    monkeypatch.setenv("CARELOOP_WEBHOOK_URL", sink.url + "/hooks")
    monkeypatch.setenv("CARELOOP_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
    srv = start_in_process(db_url, quiet_free_mappings)
    yield srv
    srv.stop()


def test_siu_book_then_noshow_fires_signed_webhook(server, sink):
    booked = siu("S12", control="J1-1", appt="F9001", mrn="MRN000501")
    noshow = siu("S26", control="J1-2", appt="F9001", mrn="MRN000501", status="Noshow")
    acks = send_messages("127.0.0.1", server.mllp_port, [booked, noshow])
    assert [msa(a)[1:3] for a in acks] == [["AA", "J1-1"], ["AA", "J1-2"]]

    events = wait_until(lambda: [e for e in server.get("/api/events")["items"] if e["type"] == "appointment.noshow"], what="noshow event")
    ev = events[0]
    assert ev["previous_status"] == "booked"
    assert ev["resource"]["resourceType"] == "Appointment" and ev["resource"]["status"] == "noshow"
    got = wait_until(lambda: [r for r in sink.received() if r["body"]["type"] == "appointment_noshow"], what="webhook call")
    call = got[0]
    assert call["verified"] is True
    data = call["body"]["data"]
    assert data["contact_key"].startswith("ck_")
    assert "MRN000501" not in str(call["body"])  # pseudonymous by default
    assert data["purpose"] == "care-coordination"
    trig = server.get("/api/triggers")["items"]
    noshow_t = next(t for t in trig if t["rule_id"] == "noshow-reengagement")
    assert noshow_t["status"] == "fired" and noshow_t["ruleset_version"]
    dl = server.get("/api/deliveries")["items"]
    assert dl[0]["status"] == "delivered" and dl[0]["history"][0]["status_code"] == 200


def test_python_hl7_client_gets_aa_and_reminder_is_scheduled(server):
    start = datetime.now(timezone.utc) + timedelta(days=3)
    with hl7.client.MLLPClient("127.0.0.1", server.mllp_port) as client:
        ack = client.send_message(siu("S12", control="PH-1", appt="F9100", start=start).decode())
    assert msa(ack)[1:3] == ["AA", "PH-1"]
    trig = wait_until(lambda: [t for t in server.get("/api/triggers")["items"] if t["rule_id"] == "appointment-reminder-24h"], what="reminder")
    t = trig[0]
    assert t["status"] == "pending"
    due = datetime.fromisoformat(t["due_at"])
    assert abs((due - (start - timedelta(hours=24))).total_seconds()) < 2


def test_cancel_cancels_pending_reminder_before_due(server):
    start = datetime.now(timezone.utc) + timedelta(days=4)
    send_messages("127.0.0.1", server.mllp_port, [siu("S12", control="C-1", appt="F9200", start=start)])
    wait_until(lambda: [t for t in server.get("/api/triggers")["items"] if t["status"] == "pending"], what="pending reminder")
    send_messages("127.0.0.1", server.mllp_port, [siu("S15", control="C-2", appt="F9200", start=start, status="Cancelled")])
    t = wait_until(lambda: [t for t in server.get("/api/triggers?rule_id=appointment-reminder-24h")["items"] if t["status"] == "cancelled"], what="cancelled reminder")[0]
    assert "appointment.cancelled" in t["reason"]


def test_reschedule_moves_reminder(server):
    start = datetime.now(timezone.utc) + timedelta(days=4)
    later = start + timedelta(days=2)
    send_messages("127.0.0.1", server.mllp_port, [siu("S12", control="R-1", appt="F9300", start=start),
                                                  siu("S13", control="R-2", appt="F9300", start=later)])
    def moved():
        items = server.get("/api/triggers?rule_id=appointment-reminder-24h")["items"]
        return [t for t in items if t["reason"] and "moved" in t["reason"]]
    t = wait_until(moved, what="moved reminder")[0]
    assert abs((datetime.fromisoformat(t["due_at"]) - (later - timedelta(hours=24))).total_seconds()) < 2
    assert len(server.get("/api/triggers?rule_id=appointment-reminder-24h")["items"]) == 1


def test_duplicate_gets_same_ack_and_is_processed_once(server):
    m = siu("S12", control="D-1", appt="F9400")
    a1, a2 = send_messages("127.0.0.1", server.mllp_port, [m, m])
    assert a1 == a2
    wait_until(lambda: server.get("/api/messages?status=duplicate")["items"], what="duplicate recorded")
    wait_until(lambda: server.get("/api/messages?status=processed")["items"], what="processed")
    booked = [e for e in server.get("/api/events")["items"] if e["type"] == "appointment.booked"]
    assert len(booked) == 1


def test_older_message_does_not_roll_state_back(server):
    now = datetime.now(timezone.utc)
    newer = siu("S15", control="O-2", appt="F9500", status="Cancelled", sent=now)
    older = siu("S12", control="O-1", appt="F9500", sent=now - timedelta(hours=1))
    send_messages("127.0.0.1", server.mllp_port, [newer, older])
    wait_until(lambda: len(server.get("/api/messages?status=processed")["items"]) == 2, what="both processed")
    evs = server.get("/api/events")["items"]
    assert [e["type"] for e in evs] == ["appointment.cancelled"]
    msgs = {m["control_id"]: m for m in server.get("/api/messages")["items"]}
    assert "older" in (msgs["O-1"]["error"] or "")


def test_merge_moves_pending_work_to_surviving_patient(server):
    start = datetime.now(timezone.utc) + timedelta(days=6)
    send_messages("127.0.0.1", server.mllp_port, [siu("S12", control="M-1", appt="F9600", mrn="MRN000777", start=start)])
    wait_until(lambda: server.get("/api/triggers?status=pending")["items"], what="pending reminder")
    send_messages("127.0.0.1", server.mllp_port, [adt("A40", control="M-2", mrn="MRN000888", prior_mrn="MRN000777")])
    def moved():
        items = server.get("/api/triggers?status=pending")["items"]
        return items and items[0]["patient_key"].endswith("|MRN000888")
    wait_until(moved, what="trigger follows the surviving patient")


def test_malformed_inputs_get_ae_or_ar_and_are_kept(server):
    port = server.mllp_port
    no_msh = b"PID|1||MRN1^^^HOSP^MR\r"
    bad_enc = b"MSH|^~|A|B|C|D|20240101||ADT^A01|BE-1|P|2.5.1\rPID|1\r"
    bad_version = siu("S12", control="V-1", version="9.9")
    bad_pid = siu("S12", control="P-1").replace(b"|P|2.5.1", b"|X|2.5.1")
    unknown_type = b"MSH|^~\\&|A|HOSP|C|D|20240101||ORU^R01^ORU_R01|U-1|P|2.5.1\rPID|1\rOBR|1\r"
    acks = send_messages("127.0.0.1", port, [no_msh, bad_enc, bad_version, bad_pid, unknown_type])
    codes = [msa(a)[1] for a in acks]
    assert codes == ["AE", "AE", "AR", "AR", "AA"]
    assert err(acks[0]) and err(acks[1]) and "203" in err(acks[2]) and "202" in err(acks[3])
    msgs = server.get("/api/messages")["items"]
    statuses = sorted(m["status"] for m in msgs)
    assert statuses == ["failed", "failed", "ignored", "rejected", "rejected"]


def test_oversize_and_framing_over_raw_socket(server):
    port = server.mllp_port
    big = siu("S12", control="BIG-1") + b"NTE|1||" + b"x" * 1_100_000 + b"\r"
    good = siu("S12", control="G-1", appt="F9700")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        # junk before the start block, the big frame split across writes, then a good frame plus trailing LF in one write
        s.sendall(b"\x00\x00\n")
        data = frame(big)
        s.sendall(data[:70000])
        s.sendall(data[70000:] + frame(good) + b"\n")
        buf = b""
        while buf.count(b"\x1c") < 2:
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
    acks = [p.split(b"\x1c")[0] for p in buf.split(b"\x0b")[1:]]
    assert msa(acks[0])[1:3] == ["AE", "BIG-1"] and "exceeds" in err(acks[0])
    assert msa(acks[1])[1:3] == ["AA", "G-1"]
    failed = server.get("/api/messages?status=failed")["items"]
    assert any("exceeds" in (m["error"] or "") for m in failed)


def test_non_utf8_body_decoded_by_msh18(server):
    m = siu("S12", control="L1-1", appt="F9800").replace(b"|P|2.5.1", b"|P|2.5.1|||||8859/1").replace(b"TESTPATIENT^BRAVO", "TESTPATIENT^BRÉA".encode("latin-1"))
    (ack,) = send_messages("127.0.0.1", server.mllp_port, [m])
    assert msa(ack)[1] == "AA"
    ev = wait_until(lambda: server.get("/api/events")["items"], what="event")[0]
    assert ev["patient_key"].endswith("|MRN000500")
    raw = httpx.get(server.http_url + f"/api/messages/{server.get('/api/messages')['items'][0]['id']}/raw").json()
    assert "BR\xc9A" in raw["raw"]  # original bytes kept (shown as latin-1)


def test_http_ingest_returns_ack(server):
    r = httpx.post(server.http_url + "/hl7v2", content=siu("S12", control="H-1", appt="F9900"),
                   headers={"Content-Type": "x-application/hl7-v2+er7"})
    assert r.status_code == 200
    assert msa(r.content)[1:3] == ["AA", "H-1"]


def test_enhanced_mode_commit_ack(server):
    m = siu("S12", control="E-1", appt="F9950").replace(b"|P|2.5.1", b"|P|2.5.1|||AL|NE")
    (ack,) = send_messages("127.0.0.1", server.mllp_port, [m])
    assert msa(ack)[1:3] == ["CA", "E-1"]


def test_many_concurrent_connections(server):
    async def one(i: int) -> list[str]:
        r, w = await asyncio.open_connection("127.0.0.1", server.mllp_port)
        out = []
        for j in range(5):
            w.write(frame(siu("S12", control=f"CC-{i}-{j}", appt=f"F{i}{j}")))
            await w.drain()
            data = await r.readuntil(b"\x1c\r")
            out.append(msa(data.strip(b"\x0b\x1c\r"))[1])
        w.close()
        return out

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(one(i) for i in range(20)))

    results = asyncio.run(main())
    assert all(code == "AA" for r in results for code in r)
    wait_until(lambda: len(server.get("/api/messages?status=processed&limit=1000")["items"]) == 100, what="100 processed")


def test_every_sample_message_is_accepted(server):
    from middleware.samples import sample_paths

    acks = send_messages("127.0.0.1", server.mllp_port, [p.read_bytes() for p in sample_paths()])
    assert all(msa(a)[1] == "AA" for a in acks)
    wait_until(lambda: len(server.get("/api/messages?status=processed")["items"]) == len(acks), what="samples processed")


def test_fixture_messages_in_two_versions_process(server):
    names = ["siu_s12_v23.hl7", "siu_s12_v251.hl7", "adt_a01_v23.hl7", "adt_a03_v251.hl7"]
    acks = send_messages("127.0.0.1", server.mllp_port, [hl7_fixture(n) for n in names])
    assert [msa(a)[1] for a in acks] == ["AA"] * 4
    wait_until(lambda: len(server.get("/api/messages?status=processed")["items"]) == 4, what="processed")
