"""SIGKILL `careloop serve` in the middle of an MLLP stream, at points chosen by fault hooks
(``CARELOOP_FAULT=point:N`` -> ``os._exit(137)`` at the N-th hit, not a timer), restart it,
and check: every ACKed message is stored and processed once; every trigger is delivered at
least once, and the receiver, de-duplicating on ``webhook-id``, sees each exactly once."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.listeners.mllp_framing import EB, SB, frame
from tests.support.dbrows import rows_at
from tests.support.hl7msgs import siu
from tests.support.server import SubProcess, start_subprocess, wait_until

PAIRS = 12  # booked + no-show per patient: 24 messages, 12 immediate webhooks


def messages() -> list[tuple[str, bytes]]:
    out = []
    for i in range(PAIRS):
        mrn, appt = f"MRN08{i:04d}", f"CR{i}"
        out.append((f"CR-{i}-B", siu("S12", control=f"CR-{i}-B", appt=appt, mrn=mrn)))
        out.append((f"CR-{i}-N", siu("S26", control=f"CR-{i}-N", appt=appt, mrn=mrn, status="Noshow")))
    return out


def send_one(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(frame(payload))
        buf = b""
        while EB not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the ACK")
            buf += chunk
    return buf[buf.index(SB) + 1: buf.index(EB)]


@pytest.mark.slow  # six restarts of a careloop subprocess, 15-30 s each
@pytest.mark.parametrize("fault", [
    "inbox.before_commit:3",    # batch not stored, no ACK: the sender resends
    "inbox.after_commit:3",     # stored, killed before the ACK: the resend is a duplicate, processed once
    "mllp.before_ack:5",        # stored, ACK not yet written
    "process.after_commit:1",   # processing committed, before waking the scheduler
    "scheduler.after_commit:1", # trigger fired + delivery row committed, nothing sent yet
    "delivery.after_send:1",    # webhook sent, outcome not recorded: resent with the same webhook-id
])
def test_sigkill_at_fault_point_then_restart(fault: str, tmp_path: Path, immediate_mappings: Path, sink, db_url: str):
    db = db_url
    env = {"CARELOOP_WEBHOOK_URL": sink.url + "/hooks", "CARELOOP_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
           "CARELOOP_WORKER_POLL_INTERVAL_S": "0.1"}
    srv: SubProcess = start_subprocess(db, immediate_mappings, tmp_path, env={**env, "CARELOOP_FAULT": fault})
    first = srv
    restarted = False

    def restart() -> SubProcess:
        nonlocal restarted
        assert first.proc.wait(timeout=15) == 137, "the fault hook, not something else, must have ended the process"
        restarted = True
        return start_subprocess(db, immediate_mappings, tmp_path, env=env,
                                http_port=int(first.http_url.rsplit(":", 1)[1]), mllp_port=first.mllp_port)

    acked: list[str] = []
    try:
        for control, payload in messages():
            for _attempt in range(3):  # a real sender resends until it gets an ACK
                try:
                    ack = send_one(srv.mllp_port, payload)
                    assert b"MSA|AA|" + control.encode() in ack
                    acked.append(control)
                    break
                except (ConnectionError, OSError):
                    assert not restarted, "crashed twice"
                    srv = restart()
            else:
                pytest.fail(f"{control} never acknowledged")
        # faults after ingest fire asynchronously, in the workers: wait for that crash
        if not restarted:
            wait_until(lambda: first.proc.poll() is not None, 40, what=f"the fault point {fault} to end the process")
            srv = restart()

        wait_until(lambda: len({r["webhook_id"] for r in sink.received() if r["verified"]}) >= PAIRS, 40,
                   what="every trigger delivered after the restart")
        wait_until(lambda: rows_at(db, "SELECT count(*) FROM delivery WHERE status = 'delivered'")[0][0] == PAIRS,
                   20, what="every delivery recorded as delivered")
    finally:
        srv.terminate()
        first.kill()

    assert len(acked) == 2 * PAIRS
    # every ACKed message is stored, and processed exactly once (resends are stored as duplicates)
    for control in acked:
        rows = rows_at(db, "SELECT status FROM inbound_message WHERE control_id = :c", c=control)
        live = [s for (s,) in rows if s != "duplicate"]
        assert live == ["processed"], (control, rows)
    events = rows_at(db, "SELECT resource_key, count(*) FROM event WHERE type = 'appointment.noshow' GROUP BY resource_key")
    assert len(events) == PAIRS and all(n == 1 for _, n in events), events
    fired = rows_at(db, "SELECT id FROM \"trigger\" WHERE rule_id = 'noshow-reengagement' AND status = 'fired'")
    assert len(fired) == PAIRS
    # at least once on the wire; exactly once after de-duplicating on webhook-id
    calls = [r for r in sink.received() if r["verified"]]
    unique = {r["webhook_id"]: r for r in calls if not r["duplicate"]}
    assert len(unique) == PAIRS
    assert sorted(str(r["trigger_id"]) for r in unique.values()) == sorted(str(t) for (t,) in fired)
    if fault.startswith("delivery.after_send"):
        assert sink.duplicates() >= 1, "the send before the crash must have been repeated with the same webhook-id"
