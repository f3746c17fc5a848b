"""MLLP over TLS with a real TLS client on loopback; certificates generated per test.

Handshake + ACK; mutual TLS (unknown CA, expired and missing client certificates refused;
the certificate's subject selects the source); certificate rotated on disk without a restart;
TLS 1.1 refused; the source's address allow-list; the handshake under the frame deadline;
the PROXY protocol in front of TLS."""
from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from middleware.config.listeners import ListenerTls, ProxyProtocolSettings
from middleware.config.sources import Hl7Settings, Source
from middleware.listeners.mllp_framing import frame
from tests.integration.conftest_mllp import BOTH_LOOPS, closed_by_server, mllp, msa, read_acks  # noqa: F401
from tests.integration.tlscerts import Issued, issue, make_ca
from tests.support.hl7msgs import siu

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BOTH_LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


class Pki:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.ca = make_ca()
        self.server = issue(self.ca, "careloop-mllp", server=True)
        self.cert, self.key = self.server.write(d, "server")
        self.ca_file = d / "clients-ca.crt"
        self.ca_file.write_bytes(self.ca.cert_pem())

    def client_ctx(self, client: Issued | None = None, *, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.dir / "server-ca.crt"))
        ctx.check_hostname = False  # we connect to 127.0.0.1 and pin the CA
        if max_version is not None:
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = max_version
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        if client is not None:
            c, k = client.write(self.dir, f"client-{x509.random_serial_number()}")
            ctx.load_cert_chain(str(c), str(k))
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    p = Pki(tmp_path)
    (tmp_path / "server-ca.crt").write_bytes(p.ca.cert_pem())
    return p


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def tls_exchange(port: int, ctx: ssl.SSLContext, control: str) -> list[str]:
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
    try:
        w.write(frame(siu("S12", control=control)))
        (ack,) = await read_acks(r, 1)
        return msa(ack)[1:3]
    finally:
        w.close()


async def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """The handshake fails, or the server closes before answering a frame."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 10)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    try:
        w.write(frame(siu("S12", control="NOPE")))
        await read_acks(r, 1, timeout=5)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError):
        return True
    finally:
        w.close()
    return False


async def test_tls_handshake_and_ack(mllp, pki):
    h = await mllp(tls=ListenerTls(cert_file=pki.cert, key_file=pki.key))
    assert await tls_exchange(h.port, pki.client_ctx(), "TLS-1") == ["AA", "TLS-1"]
    (row,) = await h.wait_rows(1)
    assert row[0] == "TLS-1" and row[1] == "received"


async def test_mutual_tls_subject_selects_the_source_and_bad_certificates_are_refused(mllp, pki):
    port = free_port()
    sources = [
        Source(name="epic", hl7=Hl7Settings(tls_subjects=["epic-interface"])),
        Source(name="port-owner", hl7=Hl7Settings(ports=[port])),
    ]
    h = await mllp(port=port, sources=sources,
                   tls=ListenerTls(cert_file=pki.cert, key_file=pki.key, client_ca_file=pki.ca_file))
    good = issue(pki.ca, "epic-interface", server=False)
    other = issue(pki.ca, "lab-interface", server=False)
    assert await tls_exchange(h.port, pki.client_ctx(good), "MT-1") == ["AA", "MT-1"]
    assert await tls_exchange(h.port, pki.client_ctx(other), "MT-2") == ["AA", "MT-2"]
    rows = await h.wait_rows(2)
    assert [(r[0], r[3]) for r in rows] == [("MT-1", "epic"), ("MT-2", "port-owner")]
    # refused: a certificate from another CA, an expired one, none at all
    stranger = issue(make_ca("someone else's CA"), "epic-interface", server=False)
    expired = issue(pki.ca, "epic-interface", server=False, expired=True)
    before = h.listener.stats.refused.get("TLS handshake failed", 0)
    assert await refused(h.port, pki.client_ctx(stranger))
    assert await refused(h.port, pki.client_ctx(expired))
    assert await refused(h.port, pki.client_ctx(None))
    assert h.listener.stats.refused.get("TLS handshake failed", 0) - before == 3
    assert len(h.rows()) == 2


async def test_certificate_rotated_on_disk_is_used_by_the_next_connection(mllp, pki):
    h = await mllp(tls=ListenerTls(cert_file=pki.cert, key_file=pki.key))

    async def served_cert() -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", h.port, ssl=pki.client_ctx())
        der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        w.close()
        return der

    first = await served_cert()
    assert first == pki.server.cert.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                            fromlist=["Encoding"]).Encoding.DER)
    rotated = issue(pki.ca, "careloop-mllp-rotated", server=True)
    tmp_c, tmp_k = rotated.write(pki.dir, "incoming")
    os.replace(tmp_k, pki.key)  # as a deployment tool does: new files moved into place
    os.replace(tmp_c, pki.cert)
    second = await served_cert()
    assert second != first and x509.load_der_x509_certificate(second).subject == rotated.cert.subject
    assert h.listener.tls is not None and h.listener.tls.reloads == 1
    assert await tls_exchange(h.port, pki.client_ctx(), "ROT-1") == ["AA", "ROT-1"]


async def test_tls_1_1_is_refused(mllp, pki):
    h = await mllp(tls=ListenerTls(cert_file=pki.cert, key_file=pki.key))
    try:
        old = pki.client_ctx(max_version=ssl.TLSVersion.TLSv1_1)
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot build a TLS 1.1 client")
    assert await refused(h.port, old)
    # the server saw the ClientHello and refused it (not only the local client library)
    assert h.listener.stats.refused.get("TLS handshake failed", 0) == 1
    assert await tls_exchange(h.port, pki.client_ctx(), "V12") == ["AA", "V12"]


async def test_client_outside_the_allow_list_is_refused(mllp, pki):
    port = free_port()
    sources = [Source(name="clinic", hl7=Hl7Settings(ports=[port], allow_from=["10.20.0.0/16", "127.0.0.2/32"]))]
    h = await mllp(port=port, sources=sources, tls=ListenerTls(cert_file=pki.cert, key_file=pki.key))
    assert await refused(h.port, pki.client_ctx())  # from 127.0.0.1
    assert h.listener.stats.refused == {"client address not in the source's allow_from": 1}
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=pki.client_ctx(), local_addr=("127.0.0.2", 0))
    w.write(frame(siu("S12", control="AL-1")))
    assert msa((await read_acks(r, 1))[0])[1:3] == ["AA", "AL-1"]
    w.close()
    (row,) = await h.wait_rows(1)
    assert row[3] == "clinic"


async def test_stalled_tls_handshake_counts_against_the_frame_deadline(mllp, pki):
    h = await mllp(frame_deadline_s=0.5, tls=ListenerTls(cert_file=pki.cert, key_file=pki.key))
    r, w = await asyncio.open_connection("127.0.0.1", h.port)
    w.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
    assert await closed_by_server(r, 5)
    assert h.listener.stats.closed == {"TLS handshake not complete within the frame deadline": 1}
    w.close()


def proxy_v2(client: str, port: int = 40000) -> bytes:
    from ipaddress import ip_address

    from proxyprotocol.result import ProxyResultIPv4
    from proxyprotocol.v2 import ProxyProtocolV2

    return ProxyProtocolV2().pack(ProxyResultIPv4((ip_address(client), port), (ip_address("127.0.0.1"), 2575)))


async def test_proxy_protocol_gives_the_real_client_to_caps_and_allow_lists(mllp):
    port = free_port()
    sources = [Source(name="clinic", hl7=Hl7Settings(ports=[port], allow_from=["10.9.8.0/24"]))]
    h = await mllp(port=port, sources=sources, max_connections_per_address=1,
                   proxy_protocol=ProxyProtocolSettings(trusted=["127.0.0.1/32"]))
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(proxy_v2("10.9.8.7") + frame(siu("S12", control="PP-1")))  # header and frame in one segment
    assert msa((await read_acks(r, 1))[0])[1:3] == ["AA", "PP-1"]
    # a second connection from the same real client: the per-address cap sees 10.9.8.7, not the balancer
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    w2.write(proxy_v2("10.9.8.7"))
    assert await closed_by_server(r2)
    # another real client through the same balancer is served (v1 header)
    r3, w3 = await asyncio.open_connection("127.0.0.1", port)
    w3.write(b"PROXY TCP4 10.9.8.9 127.0.0.1 40001 2575\r\n" + frame(siu("S12", control="PP-2")))
    assert msa((await read_acks(r3, 1))[0])[1:3] == ["AA", "PP-2"]
    # a real client outside the source's allow-list; a header that is not one; a peer not trusted
    r4, w4 = await asyncio.open_connection("127.0.0.1", port)
    w4.write(proxy_v2("192.0.2.1"))
    assert await closed_by_server(r4)
    r5, w5 = await asyncio.open_connection("127.0.0.1", port)
    w5.write(frame(siu("S12", control="PP-X")))
    assert await closed_by_server(r5)
    r6, w6 = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
    assert await closed_by_server(r6)
    assert h.listener.stats.refused == {
        "per-address connection cap": 1,
        "client address not in the source's allow_from": 1,
        "invalid PROXY protocol header": 1,
        "PROXY protocol header from an untrusted address": 1,
    }
    assert [row[0] for row in h.rows()] == ["PP-1", "PP-2"]
    for x in (w, w2, w3, w4, w5, w6):
        x.close()


async def test_proxy_header_then_tls_handshake_on_one_connection(mllp, pki):
    """Balancers send the PROXY header in clear before the client's TLS bytes."""
    import socket

    port = free_port()
    sources = [Source(name="clinic", hl7=Hl7Settings(ports=[port], allow_from=["10.9.8.0/24"]))]
    h = await mllp(port=port, sources=sources, proxy_protocol=ProxyProtocolSettings(trusted=["127.0.0.1/32"]),
                   tls=ListenerTls(cert_file=pki.cert, key_file=pki.key))
    ctx = pki.client_ctx()

    def client(real: str) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(proxy_v2(real))
            with ctx.wrap_socket(raw) as s:
                s.sendall(frame(siu("S12", control=f"PT-{real}")))
                buf = b""
                while b"\x1c" not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                return buf

    loop = asyncio.get_running_loop()
    assert b"MSA|AA|PT-10.9.8.7" in await loop.run_in_executor(None, client, "10.9.8.7")
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        await loop.run_in_executor(None, client, "192.0.2.5")
    assert h.listener.stats.refused == {"client address not in the source's allow_from": 1}
