"""Issue 16: ``careloop serve`` runs its worker (processing, scheduler, delivery) in a child
process of its own, supervised: woken on every commit, its counters in serve's ``/metrics``,
restarted when it dies, and gone when serve dies (however it dies)."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from middleware.cli.send import send_messages
from tests.support.hl7msgs import siu
from tests.support.server import SubProcess, start_subprocess, wait_until

ENV = {"CARELOOP_WEBHOOK_URL": "http://127.0.0.1:9/none"}


def workers_of(pid: int) -> list[int]:
    """``careloop worker --parent PID`` processes whose parent is ``pid``."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            try:
                cmd = Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"worker" in cmd and b"--parent" in cmd:
                out.append(k)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processed(srv: SubProcess) -> int:
    return len(httpx.get(srv.http_url + "/api/messages?status=processed&limit=1000", timeout=10).json()["items"])


def metric(srv: SubProcess, name: str) -> float:
    text = httpx.get(srv.http_url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_serve_runs_its_worker_in_a_child_process_and_restarts_it(tmp_path: Path, mappings_dir: Path, db_url: str) -> None:
    srv = start_subprocess(db_url, mappings_dir, tmp_path, env=ENV)
    try:
        child = wait_until(lambda: workers_of(srv.proc.pid), 30, what="the worker process")[0]
        assert srv.get("/healthz")["worker"] == "process"
        acks = send_messages("127.0.0.1", srv.mllp_port, [siu("S12", control=f"WP1-{i}", appt=f"WP1{i}") for i in range(5)])
        assert all(b"MSA|AA|" in a for a in acks)
        wait_until(lambda: processed(srv) == 5, 30, what="5 messages processed by the worker process")
        # its counters reach serve's /metrics (the processing happened in the child, not in serve)
        wait_until(lambda: metric(srv, 'careloop_processed_messages_total{outcome="processed"}') >= 5, 10,
                   what="the worker process's counter in serve's /metrics")

        os.kill(child, signal.SIGKILL)  # the worker dies: serve restarts it, ingest goes on meanwhile
        acks = send_messages("127.0.0.1", srv.mllp_port, [siu("S12", control=f"WP2-{i}", appt=f"WP2{i}") for i in range(5)])
        assert all(b"MSA|AA|" in a for a in acks)
        again = wait_until(lambda: [p for p in workers_of(srv.proc.pid) if p != child], 30, what="a new worker process")
        assert not alive(child)
        assert metric(srv, "careloop_worker_process_starts_total") == 2
        wait_until(lambda: processed(srv) == 10, 30, what="the messages stored meanwhile processed by the new worker")
        assert srv.proc.poll() is None
    finally:
        srv.terminate()
    wait_until(lambda: not alive(again[0]), 10, what="serve's stop to end its worker process")


def test_the_worker_process_dies_with_serve(tmp_path: Path, mappings_dir: Path, db_url: str) -> None:
    srv = start_subprocess(db_url, mappings_dir, tmp_path, env=ENV)
    child = wait_until(lambda: workers_of(srv.proc.pid), 30, what="the worker process")[0]
    srv.proc.send_signal(signal.SIGKILL)  # no chance to stop it: the kernel must (PR_SET_PDEATHSIG)
    srv.proc.wait(timeout=10)
    wait_until(lambda: not alive(child), 10, what="the orphaned worker process to end")


def test_worker_in_process_runs_no_child(tmp_path: Path, mappings_dir: Path, db_url: str) -> None:
    srv = start_subprocess(db_url, mappings_dir, tmp_path, env={**ENV, "CARELOOP_WORKER_PROCESS": "false"})
    try:
        acks = send_messages("127.0.0.1", srv.mllp_port, [siu("S12", control="WP3-1", appt="WP31")])
        assert b"MSA|AA|" in acks[0]
        wait_until(lambda: processed(srv) == 1, 30, what="processed in serve's own threads")
        assert workers_of(srv.proc.pid) == []
        assert srv.get("/healthz")["worker"] == "in-process"
        assert metric(srv, 'careloop_processed_messages_total{outcome="processed"}') == 1
    finally:
        srv.terminate()


@pytest.mark.sqlite_only  # the ingest spool is SQLite's: PostgreSQL has no one writer to wait for
def test_acks_do_not_wait_for_the_main_databases_writer(tmp_path: Path, mappings_dir: Path, db_url: str) -> None:
    """Issue 16: with the worker running, serve commits what it receives to the ingest spool, so an ACK
    never queues behind a writer of the main database (here another connection holding SQLite's write
    lock while they are sent, as a long processing batch would); the messages reach the inbox and are processed
    once the writer lets go."""
    srv = start_subprocess(db_url, mappings_dir, tmp_path, env=ENV)
    try:
        wait_until(lambda: workers_of(srv.proc.pid), 30, what="the worker process")
        db = db_url.split("///", 1)[1]
        hold = sqlite3.connect(db, isolation_level=None, timeout=30)
        hold.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        acks = send_messages("127.0.0.1", srv.mllp_port, [siu("S12", control=f"SP-{i}", appt=f"SP{i}") for i in range(5)])
        took = time.monotonic() - t0
        assert all(b"MSA|AA|" in a for a in acks)
        assert took < 2.0, f"5 ACKs took {took:.1f} s while the main database's writer was held"
        assert processed(srv) == 0
        assert metric(srv, "careloop_ingest_spool_unmoved") == 5
        hold.execute("COMMIT")
        hold.close()
        wait_until(lambda: processed(srv) == 5, 30, what="the spooled messages moved and processed")
        assert metric(srv, "careloop_ingest_spool_unmoved") == 0
    finally:
        srv.terminate()
