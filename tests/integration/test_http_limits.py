"""Oversize HTTP bodies are refused whole (413), never cut and accepted, on a real server.

``POST /hl7v2`` answers an HL7 NAK (AE, ERR naming the limit, MSA-2 = MSH-10), the FHIR
endpoints an OperationOutcome; the refused prefix is stored as a failed message. Covers a
declared ``Content-Length``, a chunked body without one, a ``Content-Length`` that claims
more than is sent, and the memory of a server sent a body 64 times its cap.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlmodel import Session, col, select

from middleware.storage.tables import InboundMessage
from tests.support.hl7msgs import siu
from tests.support.server import REPO, InProcess, start_in_process, start_subprocess, wait_until

LIMIT = 100_000
ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
FJ = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def srv(tmp_path: Path, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[InProcess]:
    monkeypatch.delenv("CARELOOP_FHIR_TOKEN_DEFAULT", raising=False)
    s = start_in_process(db_url, mappings_dir, http_max_hl7_bytes=LIMIT,
                         http_max_fhir_bytes=LIMIT, http_max_api_bytes=LIMIT)
    try:
        yield s
    finally:
        s.stop()


def padded_siu(control: str, size: int) -> bytes:
    """A valid SIU^S12 of at least ``size`` bytes: NTE segments after the ones careloop reads."""
    base = siu("S12", control=control)
    out = bytearray(base)
    n = 1
    while len(out) < size:
        out += f"NTE|{n}||{'X' * 900}\r".encode()
        n += 1
    return bytes(out)


def stored(srv: InProcess, **where: Any) -> list[InboundMessage]:
    """The inbox's rows, once the ingest spool's mover has copied what was answered (milliseconds)."""
    deadline = time.monotonic() + 10
    while srv.runtime.writer.unmoved and time.monotonic() < deadline:
        time.sleep(0.01)
    with Session(srv.runtime.engine) as s:
        stmt = select(InboundMessage).order_by(col(InboundMessage.id))
        for k, v in where.items():
            stmt = stmt.where(getattr(InboundMessage, k) == v)
        return list(s.exec(stmt))


def raw_http(port: int, head: bytes, chunks: Iterator[bytes] | list[bytes], *, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` then ``chunks`` from a thread (stopping when the server closes) and read the response."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send() -> None:
        try:
            sock.sendall(head)
            for c in chunks:
                sock.sendall(c)
        except OSError:
            pass  # the server refused and closed: expected for an oversize body

    t = threading.Thread(target=send, daemon=True)
    t.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < _expected_len(data):
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    head_text, _, body = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def _expected_len(data: bytes) -> int:
    head, sep, _ = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    return len(head) + len(sep) + int(m.group(1)) if (sep and m) else 1 << 62


def chunked(total: int, piece: int = 16_384) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        yield b"%x\r\n" % n + b"Y" * n + b"\r\n"
        sent += n
    yield b"0\r\n\r\n"


def assert_hl7_nak(body: bytes, control: str) -> None:
    segs = body.decode().split("\r")
    msa = next(s for s in segs if s.startswith("MSA|")).split("|")
    assert msa[1] == "AE" and msa[2] == control
    err = next(s for s in segs if s.startswith("ERR|"))
    assert f"{LIMIT}-byte limit" in err and "CARELOOP_HTTP_MAX_HL7_BYTES" in err


def test_hl7_over_limit_is_refused_whole_and_its_prefix_kept(srv: InProcess) -> None:
    msg = padded_siu("BIG-1", LIMIT + 5_000)
    r = httpx.post(srv.http_url + "/hl7v2", content=msg, headers=ER7, timeout=10)
    assert r.status_code == 413
    assert_hl7_nak(r.content, "BIG-1")
    rows = stored(srv, control_id="BIG-1")
    assert len(rows) == 1 and rows[0].status == "failed"
    assert f"{LIMIT}-byte limit" in (rows[0].error or "")
    assert rows[0].raw and msg.startswith(rows[0].raw) and len(rows[0].raw) < len(msg)
    time.sleep(0.5)  # give the processor a chance: nothing of the refused message is processed
    assert stored(srv, control_id="BIG-1")[0].status == "failed"


def test_hl7_at_limit_is_accepted(srv: InProcess) -> None:
    msg = padded_siu("FIT-1", LIMIT - 1_000)[:LIMIT]
    msg = msg[: msg.rfind(b"\r") + 1]
    r = httpx.post(srv.http_url + "/hl7v2", content=msg, headers=ER7, timeout=10)
    assert r.status_code == 200 and b"MSA|AA|FIT-1" in r.content
    assert stored(srv, control_id="FIT-1")[0].raw == msg


def test_hl7_chunked_body_over_limit_is_refused(srv: InProcess) -> None:
    port = int(srv.http_url.rsplit(":", 1)[1])
    msg = padded_siu("CHUNK-1", 3 * LIMIT)
    pieces = [msg[i:i + 8192] for i in range(0, len(msg), 8192)]
    body = [b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]
    head = (b"POST /hl7v2 HTTP/1.1\r\nHost: t\r\nContent-Type: x-application/hl7-v2+er7\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    status, headers, resp = raw_http(port, head, body)
    assert status == 413 and headers.get("connection") == "close"
    assert_hl7_nak(resp, "CHUNK-1")
    assert stored(srv, control_id="CHUNK-1")[0].status == "failed"


def test_content_length_over_limit_is_answered_before_the_body(srv: InProcess) -> None:
    """A sender declaring 50 MB and sending a few bytes is answered at once (not after a 50 MB wait)."""
    port = int(srv.http_url.rsplit(":", 1)[1])
    msg = siu("S12", control="LIE-1")
    head = (b"POST /hl7v2 HTTP/1.1\r\nHost: t\r\nContent-Type: x-application/hl7-v2+er7\r\n"
            b"Content-Length: 50000000\r\nExpect: 100-continue\r\n\r\n")
    t0 = time.monotonic()
    status, _, resp = raw_http(port, head, [], timeout=5)
    assert status == 413 and time.monotonic() - t0 < 3
    assert b"MSA|AE|" in resp and b"50000000 bytes" in resp
    # without Expect: the prefix that was sent is kept, with its control id
    head = head.replace(b"Expect: 100-continue\r\n", b"")
    status, _, resp = raw_http(port, head, [msg], timeout=5)
    assert status == 413
    assert_hl7_nak(resp, "LIE-1")
    assert stored(srv, control_id="LIE-1")[0].raw == msg


def test_fhir_over_limit_answers_413_operation_outcome(srv: InProcess) -> None:
    doc = {"resourceType": "Appointment", "id": "big1", "status": "booked", "comment": "Z" * (LIMIT + 10)}
    r = httpx.put(srv.http_url + "/fhir/default/Appointment/big1", content=orjson.dumps(doc), headers=FJ, timeout=10)
    assert r.status_code == 413
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome" and oo["issue"][0]["code"] == "too-costly"
    assert f"{LIMIT}-byte limit" in oo["issue"][0]["diagnostics"]
    assert "CARELOOP_HTTP_MAX_FHIR_BYTES" in oo["issue"][0]["diagnostics"]
    rows = [m for m in stored(srv, channel="fhir") if m.status == "failed"]
    assert len(rows) == 1 and "too-costly" not in (rows[0].error or "") and f"{LIMIT}-byte" in (rows[0].error or "")
    # a chunked notification bundle over the limit is refused the same way
    port = int(srv.http_url.rsplit(":", 1)[1])
    head = b"POST /fhir/default HTTP/1.1\r\nHost: t\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _, resp = raw_http(port, head, chunked(4 * LIMIT))
    assert status == 413 and orjson.loads(resp)["issue"][0]["code"] == "too-costly"
    assert len([m for m in stored(srv, channel="fhir") if m.status == "failed"]) == 2


def test_api_bodies_over_limit_are_refused(srv: InProcess) -> None:
    big = orjson.dumps({"patient_key": "sys|1", "reason": "x" * (LIMIT + 10)})
    r = httpx.post(srv.http_url + "/api/suppressions", content=big, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and "CARELOOP_HTTP_MAX_API_BYTES" in r.json()["detail"]
    port = int(srv.http_url.rsplit(":", 1)[1])
    head = b"POST /api/suppressions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _, _ = raw_http(port, head, chunked(4 * LIMIT))
    assert status == 413
    ok = httpx.post(srv.http_url + "/api/suppressions", json={"patient_key": "sys|1"}, timeout=10)
    assert ok.status_code == 201


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for peak RSS")
def test_large_body_keeps_server_memory_bounded(tmp_path: Path, mappings_dir: Path, db_url: str) -> None:
    """64 MiB sent chunked to a server with the default 1 MiB cap: its peak RSS grows by far less."""
    sp = start_subprocess(db_url, mappings_dir, tmp_path, env={"PYTHONPATH": str(REPO)})
    try:
        r = httpx.post(sp.http_url + "/hl7v2", content=padded_siu("WARM-1", 2000), headers=ER7, timeout=10)
        assert r.status_code == 200
        before = _peak_rss_kb(sp.proc.pid)
        port = int(sp.http_url.rsplit(":", 1)[1])
        head = b"POST /hl7v2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        status, _, _ = raw_http(port, head, chunked(64 * 1_048_576, 262_144), timeout=30)
        assert status == 413
        wait_until(lambda: httpx.get(sp.http_url + "/healthz", timeout=2).status_code == 200, 10, what="healthz")
        grown_mb = (_peak_rss_kb(sp.proc.pid) - before) / 1024
        print(f"peak RSS before {before / 1024:.1f} MiB, grown by {grown_mb:.1f} MiB for a refused 64 MiB body")
        assert grown_mb < 16, f"peak RSS grew by {grown_mb:.1f} MiB for a refused 64 MiB body"
    finally:
        sp.terminate()
