"""`careloop serve` (in process) starts the MLLP listeners configured in sources.yaml: a TLS
port with mutual TLS whose client certificate selects the source, and the allow-lists follow
a reload of the mappings."""
from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from middleware.listeners.mllp_framing import frame
from tests.integration.tlscerts import issue, make_ca
from tests.support.hl7msgs import siu
from tests.support.server import free_port, start_in_process, wait_until


def exchange(port: int, ctx: ssl.SSLContext | None, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = ctx.wrap_socket(raw) if ctx is not None else raw
        sock.sendall(frame(payload))
        buf = b""
        while b"\x1c" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the ACK")
            buf += chunk
        return buf


@pytest.fixture
def tls_server(tmp_path: Path, pipeline_mappings: Path, db_url: str):
    ca = make_ca()
    cert, key = issue(ca, "careloop", server=True).write(tmp_path, "server")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem())
    client_cert, client_key = issue(ca, "epic-interface", server=False).write(tmp_path, "client")
    tls_port = free_port()
    sources = pipeline_mappings / "sources.yaml"
    sources.write_text(sources.read_text() + (
        "  - name: epic\n"
        "    kind: hl7v2\n"
        "    hl7: {tls_subjects: [epic-interface]}\n"
        "listeners:\n"
        f"  - port: {tls_port}\n"
        f"    tls: {{cert_file: {cert}, key_file: {key}, client_ca_file: {ca_file}}}\n"
    ))
    srv = start_in_process(db_url, pipeline_mappings)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(client_cert), str(client_key))
    yield srv, tls_port, ctx, sources
    srv.stop()


def test_serve_starts_the_tls_listener_and_the_certificate_selects_the_source(tls_server) -> None:
    srv, tls_port, ctx, sources = tls_server
    ack = exchange(tls_port, ctx, siu("S12", control="SRV-TLS-1"))
    assert b"MSA|AA|SRV-TLS-1" in ack
    assert b"MSA|AA|SRV-PLAIN-1" in exchange(srv.mllp_port, None, siu("S12", control="SRV-PLAIN-1"))
    msgs = wait_until(lambda: [m for m in srv.get("/api/messages")["items"] if m.get("control_id", "").startswith("SRV-")]
                      if len(srv.get("/api/messages")["items"]) >= 2 else None, what="two stored messages")
    by_control = {m["control_id"]: m["source"] for m in msgs}
    assert by_control == {"SRV-TLS-1": "epic", "SRV-PLAIN-1": "default"}
    # the epic source now allows only another network: after a reload the next connection is refused
    sources.write_text(sources.read_text().replace("hl7: {tls_subjects: [epic-interface]}",
                                                   "hl7: {tls_subjects: [epic-interface], allow_from: [10.99.0.0/16]}"))
    assert srv.runtime.reload() == []
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        exchange(tls_port, ctx, siu("S12", control="SRV-TLS-2"))
