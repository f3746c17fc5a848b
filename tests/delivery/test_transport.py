"""The deliveries' aiohttp-backed httpx transport against a real loopback HTTP/1.1 receiver.

The receiver (asyncio, in the test's loop) counts the TCP connections it accepts and keeps each
request's head and body, so connection reuse, the bytes on the wire and refusals (nothing
received) are observed where they happen, not inferred from the client.
"""
from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware import netpolicy
from middleware.delivery.connectors._common import send_request, transport_outcome
from middleware.delivery.registry import Retry
from middleware.delivery.transport import AioTransport, delivery_client
from tests.integration.tlscerts import issue, make_ca

OPEN = netpolicy.NetPolicy(allow_private=True)
Reply = Callable[["Receiver", str], Awaitable[bytes | None]]


def _reply(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = f"HTTP/1.1 {code} X\r\ncontent-length: {len(body)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return head.encode() + b"\r\n" + body


async def _ok(_r: Receiver, _path: str) -> bytes:
    return _reply(200, b'{"ok":true}', {"content-type": "application/json"})


@dataclass
class Receiver:
    """A minimal keep-alive HTTP/1.1 server: ``reply(receiver, path)`` gives the raw answer (None: never answer)."""

    reply: Reply = _ok
    connections: int = 0
    requests: list[tuple[str, list[tuple[str, str]], bytes]] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await r.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in head[1:] if line)]
                n = int(dict(headers).get("content-length", "0"))
                body = await r.readexactly(n) if n else b""
                path = head[0].split(" ")[1]
                self.requests.append((head[0], headers, body))
                answer = await self.reply(self, path)
                if answer is None:
                    await asyncio.sleep(30)
                    return
                w.write(answer)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/hooks", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


# -- connection reuse and the bytes on the wire ----------------------------------------------------
def test_posts_reuse_one_connection_and_carry_exactly_the_httpx_request() -> None:
    async def go() -> Receiver:
        rec = await Receiver().start()
        async with delivery_client(OPEN) as http:
            for i in range(5):
                r = await http.post(rec.url(f"/hooks?n={i}"), content=b'{"i":%d}' % i,
                                    headers={"content-type": "application/json", "webhook-id": f"msg_{i}"})
                assert r.status_code == 200 and r.json() == {"ok": True}
                assert r.http_version == "HTTP/1.1"
            await http.post(rec.url("/raw"), content=b"\x00\x01")  # no content type given: none is added
        await rec.stop()
        return rec

    rec = run(go())
    assert rec.connections == 1  # five POSTs and one more over a single kept-alive TCP connection
    assert [line for line, _, _ in rec.requests][:2] == ["POST /hooks?n=0 HTTP/1.1", "POST /hooks?n=1 HTTP/1.1"]
    line, headers, body = rec.requests[3]
    names = [k for k, _ in headers]
    assert body == b'{"i":3}'
    assert dict(headers)["webhook-id"] == "msg_3" and dict(headers)["content-type"] == "application/json"
    assert dict(headers)["host"] == f"127.0.0.1:{rec.port}" and dict(headers)["content-length"] == "7"
    assert dict(headers)["user-agent"].startswith("python-httpx/")  # httpx's request, not aiohttp's defaults
    assert len(names) == len(set(names))  # no header sent twice
    assert "content-type" not in dict(rec.requests[5][1])


def test_compressed_and_chunked_answers_are_decoded_once_by_httpx() -> None:
    payload = b'{"status":"accepted","items":[1,2,3]}'

    async def gz(_r: Receiver, _p: str) -> bytes:
        return _reply(202, gzip.compress(payload), {"content-encoding": "gzip", "content-type": "application/json"})

    async def chunked(_r: Receiver, _p: str) -> bytes:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

    async def go() -> tuple[Any, bytes]:
        a, b = await Receiver(gz).start(), await Receiver(chunked).start()
        async with delivery_client(OPEN) as http:
            one = (await http.post(a.url(), json={"x": 1})).json()
            two = (await http.get(b.url("/c"))).content
        await a.stop()
        await b.stop()
        return one, two

    assert run(go()) == ({"status": "accepted", "items": [1, 2, 3]}, b"hello")


def test_one_client_serves_one_event_loop_after_another() -> None:
    """The worker keeps its clients across ``asyncio.run`` calls (tests, the one-shot CLI); each loop gets a pool."""
    http = delivery_client(OPEN)

    async def once() -> int:
        rec = await Receiver().start()
        r = await http.post(rec.url(), content=b"{}")
        await rec.stop()
        return r.status_code

    assert run(once()) == 200
    assert run(once()) == 200
    run(http.aclose())


# -- the address check at connect time ---------------------------------------------------------------
@pytest.mark.parametrize("host, allow, why", [
    ("localhost", False, "loopback or private"),
    ("127.0.0.1", False, "loopback or private"),
    ("[::ffff:127.0.0.1]", False, "loopback or private"),
    ("169.254.169.254", True, "always refused"),
    ("2852039166", True, "always refused"),
    ("metadata.google.internal", True, "always refused"),
])
def test_refused_destination_never_receives_a_connection(host: str, allow: bool, why: str) -> None:
    async def go() -> tuple[Receiver, BaseException]:
        rec = await Receiver().start()
        async with delivery_client(netpolicy.NetPolicy(allow_private=allow)) as http:
            with pytest.raises(httpx.ConnectError) as err:
                await http.post(rec.url(host=host), content=b"{}")
        await rec.stop()
        return rec, err.value

    rec, exc = run(go())
    assert why in (netpolicy.refusal_of(exc) or "")
    assert rec.connections == 0 and rec.requests == []
    out = transport_outcome(exc)  # the connectors' mapping names the rule, never a path
    assert isinstance(out, Retry) and why in out.reason and "/hooks" not in out.reason


def test_own_listener_port_refused_even_with_the_allowance() -> None:
    async def go() -> Receiver:
        rec = await Receiver().start()
        async with delivery_client(netpolicy.policy(True, rec.port)) as http:
            with pytest.raises(httpx.ConnectError, match="careloop's own"):
                await http.post(rec.url(host="localhost"), content=b"{}")
        await rec.stop()
        return rec

    assert run(go()).connections == 0


def test_name_is_resolved_once_and_only_checked_addresses_are_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the first lookup answers loopback (allowed here), later ones the metadata address.
    A name with any refused address is refused whole."""
    real = socket.getaddrinfo
    calls: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host == "rebind.test":
            calls.append(host)
            ip = "127.0.0.1" if len(calls) == 1 else "169.254.169.254"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]
        if host == "mixed.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.1", "169.254.169.254")]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)

    async def go() -> Receiver:
        rec = await Receiver().start()
        async with delivery_client(OPEN) as http:
            for _ in range(3):
                assert (await http.post(rec.url(host="rebind.test"), content=b"{}")).status_code == 200
        async with delivery_client(OPEN) as http:  # a new pool looks the name up again
            with pytest.raises(httpx.ConnectError, match="always refused"):
                await http.post(rec.url(host="rebind.test"), content=b"{}")
            with pytest.raises(httpx.ConnectError, match="always refused"):
                await http.post(rec.url(host="mixed.test"), content=b"{}")
        await rec.stop()
        return rec

    rec = run(go())
    assert calls == ["rebind.test", "rebind.test"]  # one lookup per pool, not per request
    assert rec.connections == 1 and len(rec.requests) == 3
    assert dict(rec.requests[0][1])["host"] == f"rebind.test:{rec.port}"  # the Host header keeps the name


def test_redirect_hops_are_checked_and_connectors_never_follow_them() -> None:
    async def to_metadata(_r: Receiver, _p: str) -> bytes:
        return _reply(302, headers={"location": "http://169.254.169.254/latest/meta-data/"})

    async def go() -> tuple[Receiver, Receiver, int]:
        other = await Receiver().start()

        async def to_other(_r: Receiver, _p: str) -> bytes:
            return _reply(307, headers={"location": other.url("/steal")})

        a, b = await Receiver(to_metadata).start(), await Receiver(to_other).start()
        async with delivery_client(OPEN, follow_redirects=True) as http:
            with pytest.raises(httpx.ConnectError, match="always refused"):
                await http.get(a.url("/x"))
            r = await send_request(http, "POST", b.url("/v1/track"), timeout_s=5,
                                   headers={"Api-Key": "k-123", "Authorization": "Bearer t"}, json={"x": 1})
        for rec in (a, b, other):
            await rec.stop()
        return b, other, r.status_code

    b, other, code = run(go())
    assert code == 307  # the connector's outcome to classify, not followed
    assert len(b.requests) == 1 and other.connections == 0  # the API key never reached the other origin


# -- timeouts --------------------------------------------------------------------------------------
def test_read_timeout_is_httpx_read_timeout_and_a_retry() -> None:
    async def silent(_r: Receiver, _p: str) -> None:
        return None

    async def go() -> BaseException:
        rec = await Receiver(silent).start()
        async with delivery_client(OPEN) as http:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(httpx.ReadTimeout) as err:
                await send_request(http, "POST", rec.url(), timeout_s=0.3, content=b"{}")
            assert 0.25 <= loop.time() - t0 < 3
        await rec.stop()
        return err.value

    out = transport_outcome(run(go()))
    assert isinstance(out, Retry) and out.reason == "timeout (ReadTimeout)"


def test_waiting_for_a_free_connection_times_out() -> None:
    async def silent(_r: Receiver, _p: str) -> None:
        return None

    async def go() -> None:
        rec = await Receiver(silent).start()
        async with httpx.AsyncClient(transport=AioTransport(OPEN, max_connections=1)) as http:
            hung = asyncio.create_task(http.post(rec.url(), content=b"{}", timeout=5))
            await asyncio.sleep(0.2)  # the only connection is now busy
            with pytest.raises(httpx.TimeoutException):
                await http.post(rec.url(), content=b"{}", timeout=httpx.Timeout(5, pool=0.2, connect=0.1))
            hung.cancel()
        await rec.stop()
        assert rec.connections == 1

    run(go())


def test_receiver_that_stops_reading_a_body_cannot_hold_the_send() -> None:
    """aiohttp has no write timeout; the sum of httpx's four timeouts bounds the whole exchange."""
    async def go() -> float:
        held: list[asyncio.StreamWriter] = []

        async def never_read(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            held.append(w)  # accept, then read nothing: the client's socket buffers fill up

        server = await asyncio.start_server(never_read, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        async with delivery_client(OPEN) as http:
            t0 = loop.time()
            with pytest.raises(httpx.TimeoutException):
                await http.post(f"http://127.0.0.1:{port}/hooks", content=b"x" * (64 << 20), timeout=0.25)
            took = loop.time() - t0
        for w in held:
            w.close()
        server.close()
        return took

    assert 0.25 <= run(go()) < 5


def test_closed_port_is_a_connect_error_not_a_policy_refusal() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused

    async def go() -> BaseException:
        async with delivery_client(OPEN) as http:
            with pytest.raises(httpx.ConnectError) as err:
                await http.post(f"http://127.0.0.1:{port}/hooks", content=b"{}")
        return err.value

    exc = run(go())
    assert netpolicy.refusal_of(exc) is None
    assert transport_outcome(exc) == Retry("connection error (ConnectError)")


# -- TLS -------------------------------------------------------------------------------------------
def _tls_server(tmp_path: Path) -> tuple[ssl.SSLContext, bytes]:
    ca = make_ca()
    cert, key = issue(ca, "localhost", server=True).write(tmp_path, "server")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx, ca.cert_pem()


def test_tls_verified_with_the_given_ca_and_refused_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server_ctx, ca_pem = _tls_server(tmp_path)
    trusting = ssl.create_default_context(cadata=ca_pem.decode())
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **kw: real(
        "127.0.0.1" if host == "wrong-name.test" else host, port, *a, **kw))

    async def go() -> tuple[Receiver, int, list[BaseException]]:
        rec = await Receiver().start(server_ctx)
        async with httpx.AsyncClient(transport=AioTransport(OPEN, ssl_context=trusting)) as http:
            code = (await http.post(rec.url(host="localhost", scheme="https"), content=b"{}")).status_code
            await http.post(rec.url(host="localhost", scheme="https"), content=b"{}")
            errors = []
            with pytest.raises(httpx.ConnectError) as wrong_name:  # the certificate names localhost, not this name
                await http.post(rec.url(host="wrong-name.test", scheme="https"), content=b"{}")
            errors.append(wrong_name.value)
        async with delivery_client(OPEN) as http:  # default: the public CAs (certifi), which never signed it
            with pytest.raises(httpx.ConnectError) as untrusted:
                await http.post(rec.url(host="localhost", scheme="https"), content=b"{}")
            errors.append(untrusted.value)
        await rec.stop()
        return rec, code, errors

    rec, code, errors = run(go())
    assert code == 200
    # one kept-alive TLS connection for the two POSTs; the refused handshakes never reach the handler
    assert len(rec.requests) == 2 and rec.connections == 1
    for exc in errors:
        assert netpolicy.refusal_of(exc) is None
        assert "certificate" in str(exc).lower() or "hostname" in str(exc).lower()


# -- the worker's clients ----------------------------------------------------------------------------
def test_worker_clients_send_through_the_transport_under_each_destinations_policy() -> None:
    from middleware.config.destinations import Destination
    from middleware.delivery.worker import DeliveryWorker

    def dest(allow: bool) -> Destination:
        return Destination(name="hook", type="webhook", baa=True, allow_private_network=allow)

    async def go() -> tuple[Receiver, list[str | None]]:
        rec = await Receiver().start()
        w = DeliveryWorker(None, lambda: None, contact_secret="k", own_ports=(1,))  # type: ignore[arg-type]
        strict, loose = w._client(dest(False)), w._client(dest(True))
        assert isinstance(strict._transport, AioTransport) and w._client(dest(True)) is loose  # kept per destination
        refusals: list[str | None] = []
        with pytest.raises(httpx.ConnectError) as err:
            await strict.post(rec.url(host="localhost"), content=b"{}")
        refusals.append(netpolicy.refusal_of(err.value))
        for _ in range(3):
            assert (await loose.post(rec.url(host="localhost"), content=b"{}")).status_code == 200
        mocked = DeliveryWorker(None, lambda: None, contact_secret="k",  # type: ignore[arg-type]
                                transport_factory=lambda _p: httpx.MockTransport(lambda _r: httpx.Response(299)))
        assert (await mocked._client(dest(False)).post("http://vendor.test/x")).status_code == 299
        await w.aclose()
        await mocked.aclose()
        await rec.stop()
        return rec, refusals

    rec, refusals = run(go())
    assert refusals[0] is not None and "loopback or private" in refusals[0]
    assert rec.connections == 1 and len(rec.requests) == 3
