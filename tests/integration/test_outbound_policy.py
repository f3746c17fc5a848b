"""The outbound policy at connect time, and credentials only to the configured origin.

Real HTTP servers on loopback (``http.server`` in threads); each records the requests it got.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from middleware import netpolicy
from middleware.config.sources import FhirAuth, FhirSettings, Source
from middleware.delivery.connectors._common import send_request, transport_outcome
from middleware.delivery.registry import Retry
from middleware.listeners.fhir_fetch import FetchError, FhirFetcher

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Recorder:
    """A loopback HTTP server answering from ``routes`` (path prefix → reply) and keeping each request's headers."""

    routes: dict[str, Callable[["Recorder"], Reply]] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str) -> Reply:
        for prefix, fn in self.routes.items():
            if path.startswith(prefix):
                return fn(self)
        return 404, {}, b""


@pytest.fixture
def servers() -> Iterator[Callable[[], Recorder]]:
    running: list[ThreadingHTTPServer] = []

    def start() -> Recorder:
        rec = Recorder()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                rec.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                code, headers, body = rec.answer(self.path)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        rec.port = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running.append(srv)
        return rec

    yield start
    for srv in running:
        srv.shutdown()
        srv.server_close()


def _json(doc: dict[str, Any], code: int = 200) -> Callable[[Recorder], Reply]:
    return lambda _r: (code, {"Content-Type": "application/fhir+json"}, json.dumps(doc).encode())


def _redirect(location: str, code: int = 302) -> Callable[[Recorder], Reply]:
    return lambda _r: (code, {"Location": location}, b"")


OK: Callable[[Recorder], Reply] = lambda _r: (200, {"Content-Type": "text/plain"}, b"ok")  # noqa: E731


# -- connect-time checks -----------------------------------------------------------------------
def test_localhost_refused_without_the_allowance_and_reached_with_it(servers: Callable[[], Recorder]) -> None:
    srv = servers()
    srv.routes["/"] = OK
    url = f"http://localhost:{srv.port}/x"
    with netpolicy.guarded_client(netpolicy.NetPolicy(), timeout=5) as c, pytest.raises(httpx.ConnectError) as err:
        c.get(url)
    assert "loopback or private" in (netpolicy.refusal_of(err.value) or "")
    assert srv.seen == []
    with netpolicy.guarded_client(netpolicy.NetPolicy(allow_private=True), timeout=5) as c:
        assert c.get(url).text == "ok"
    assert len(srv.seen) == 1


def test_async_client_checks_the_resolved_address(servers: Callable[[], Recorder]) -> None:
    srv = servers()
    srv.routes["/"] = OK

    async def go(allow: bool) -> str:
        async with netpolicy.guarded_async_client(netpolicy.NetPolicy(allow_private=allow), timeout=5) as c:
            return (await c.get(f"http://localhost:{srv.port}/")).text

    with pytest.raises(httpx.ConnectError):
        asyncio.run(go(False))
    assert srv.seen == []
    assert asyncio.run(go(True)) == "ok"


def test_own_port_refused_at_connect_time_even_with_the_allowance(servers: Callable[[], Recorder]) -> None:
    srv = servers()
    srv.routes["/"] = OK
    pol = netpolicy.policy(True, srv.port)
    with netpolicy.guarded_client(pol, timeout=5) as c, pytest.raises(httpx.ConnectError, match="careloop's own"):
        c.get(f"http://localhost:{srv.port}/api/mappings/reload")
    assert srv.seen == []


def test_one_lookup_and_the_checked_address_is_the_one_connected(servers: Callable[[], Recorder],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name answers loopback (allowed here) once, then an unroutable private address.
    The backend resolves once and connects to the address it checked."""
    srv = servers()
    srv.routes["/"] = OK
    real = socket.getaddrinfo
    calls: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host == "rebind.test":
            calls.append(host)
            ip = "127.0.0.1" if len(calls) == 1 else "169.254.169.254"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with netpolicy.guarded_client(netpolicy.NetPolicy(allow_private=True), timeout=3) as c:
        assert c.get(f"http://rebind.test:{srv.port}/").text == "ok"
    assert calls == ["rebind.test"]
    assert srv.seen[0][1]["host"] == f"rebind.test:{srv.port}"  # Host header (and SNI) keep the name
    with netpolicy.guarded_client(netpolicy.NetPolicy(allow_private=True), timeout=3) as c, \
            pytest.raises(httpx.ConnectError, match="always refused"):
        c.get(f"http://rebind.test:{srv.port}/")  # the second resolution answers the metadata address


def test_redirect_to_metadata_refused(servers: Callable[[], Recorder]) -> None:
    srv = servers()
    srv.routes["/"] = _redirect("http://169.254.169.254/latest/meta-data/iam/")
    pol = netpolicy.NetPolicy(allow_private=True)
    with netpolicy.guarded_client(pol, timeout=3, follow_redirects=True) as c, \
            pytest.raises(httpx.ConnectError, match="always refused"):
        c.get(f"{srv.origin}/hook")
    f = FhirFetcher(srv.origin, allow_private_network=True)
    with pytest.raises(FetchError, match="refused redirect to 169.254.169.254"):
        f.read("Patient", "p1")


def test_decimal_spelling_resolved_by_the_system_is_still_refused() -> None:
    """``2852039166`` is a *name* to httpx; the resolver turns it into 169.254.169.254, which is checked."""
    with netpolicy.guarded_client(netpolicy.NetPolicy(allow_private=True), timeout=3) as c, \
            pytest.raises(httpx.ConnectError, match="always refused"):
        c.get("http://2852039166/latest/meta-data/")


# -- connectors: redirects never carry credentials -------------------------------------------------
def test_httpx_forwards_custom_credential_headers_across_origins(servers: Callable[[], Recorder]) -> None:
    """Why connectors do not follow redirects: httpx drops ``Authorization`` on a hop to another
    origin but keeps every other header, API keys included."""
    a, b = servers(), servers()
    b.routes["/"] = OK
    a.routes["/"] = _redirect(f"{b.origin}/steal", 307)
    with httpx.Client(follow_redirects=True, trust_env=False) as c:
        c.get(f"{a.origin}/x", headers={"Api-Key": "k-123", "Authorization": "Bearer t"})
    assert b.seen[0][1].get("api-key") == "k-123" and "authorization" not in b.seen[0][1]


def test_connector_requests_never_follow_redirects(servers: Callable[[], Recorder]) -> None:
    """httpx strips only ``Authorization`` on a cross-origin redirect: an API-key header would go along.
    Connectors therefore never follow redirects, even on a client configured to."""
    a, b = servers(), servers()
    b.routes["/"] = OK
    a.routes["/"] = _redirect(f"{b.origin}/steal", 307)

    async def go() -> int:
        async with netpolicy.guarded_async_client(netpolicy.NetPolicy(allow_private=True), follow_redirects=True) as c:
            r = await send_request(c, "POST", f"{a.origin}/v1/track", timeout_s=5,
                                   headers={"Api-Key": "k-123", "Authorization": "Bearer t"}, json={"x": 1})
            return r.status_code

    assert asyncio.run(go()) == 307
    assert len(a.seen) == 1 and b.seen == []


def test_connector_refusal_is_a_retry_naming_the_rule() -> None:
    async def go() -> Any:
        async with netpolicy.guarded_async_client(netpolicy.NetPolicy()) as c:
            try:
                await send_request(c, "POST", "http://127.0.0.1:9/hooks", timeout_s=2)
            except httpx.TransportError as exc:
                return transport_outcome(exc)
        return None

    out = asyncio.run(go())
    assert isinstance(out, Retry) and "allow_private_network" in out.reason


# -- FHIR fetcher: credentials only to the configured origin ---------------------------------------
def _bundle(next_url: str | None) -> dict[str, Any]:
    links = [{"relation": "self", "url": "x"}] + ([{"relation": "next", "url": next_url}] if next_url else [])
    return {"resourceType": "Bundle", "type": "searchset", "link": links,
            "entry": [{"resource": {"resourceType": "Appointment", "id": "a1"}, "search": {"mode": "match"}}]}


def _fetcher(base: str, **kw: Any) -> FhirFetcher:
    return FhirFetcher(base, FhirAuth(kind="bearer", token_env="TOK"), env={"TOK": "secret-token"},
                       allow_private_network=True, **kw)


def test_next_link_to_another_origin_is_refused_and_gets_no_credentials(servers: Callable[[], Recorder],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    a, b = servers(), servers()
    b.routes["/"] = _json(_bundle(None))
    a.routes["/Appointment"] = _json(_bundle(f"{b.origin}/Appointment?patient=MRN12345"))
    f = _fetcher(a.origin)
    got: list[Any] = []
    with pytest.raises(FetchError, match="refused URL to 127.0.0.1"):
        for r in f.search("Appointment", {"_count": "1"}):
            got.append(r)
    assert len(got) == 1
    assert a.seen[0][1]["authorization"] == "Bearer secret-token"
    assert b.seen == []  # B never receives the Authorization header (nor any request)
    logged = [r for r in caplog.records if getattr(r, "action", "") == "fhir.link_refused"]
    assert len(logged) == 1 and "127.0.0.1" in logged[0].getMessage()
    assert "MRN12345" not in logged[0].getMessage() and "/Appointment" not in logged[0].getMessage()


def test_next_link_on_a_listed_credential_host_is_followed(servers: Callable[[], Recorder]) -> None:
    a, b = servers(), servers()
    b.routes["/"] = _json(_bundle(None))
    a.routes["/Appointment"] = _json(_bundle(f"{b.origin}/Appointment?page=2"))
    f = _fetcher(a.origin, credential_hosts=[b.origin])
    assert len(list(f.search("Appointment", {}))) == 2
    assert b.seen[0][1]["authorization"] == "Bearer secret-token"


def test_redirect_to_another_origin_is_refused(servers: Callable[[], Recorder]) -> None:
    a, b = servers(), servers()
    b.routes["/"] = _json({"resourceType": "Patient", "id": "p1"})
    a.routes["/Patient/p1"] = _redirect(f"{b.origin}/Patient/p1")
    with pytest.raises(FetchError, match="refused redirect"):
        _fetcher(a.origin).read("Patient", "p1")
    assert b.seen == []


def test_fetcher_for_source_refuses_loopback_without_the_allowance(servers: Callable[[], Recorder]) -> None:
    a = servers()
    a.routes["/"] = _json({"resourceType": "Patient", "id": "p1"})
    strict = FhirFetcher.for_source(Source(name="s", kind="fhir", fhir=FhirSettings(base_url=a.origin)))
    assert strict is not None
    with pytest.raises(FetchError, match="allow_private_network"):
        strict.read("Patient", "p1")
    assert a.seen == []
    allowed = FhirFetcher.for_source(Source(name="s", kind="fhir",
                                            fhir=FhirSettings(base_url=a.origin, allow_private_network=True)))
    assert allowed is not None and allowed.read("Patient", "p1") == {"resourceType": "Patient", "id": "p1"}


def _export_routes(a: Recorder, b: Recorder, requires_token: bool) -> None:
    a.routes["/$export"] = lambda r: (202, {"Content-Location": f"{r.origin}/status/1"}, b"")
    manifest = {"transactionTime": "2025-01-01T00:00:00Z", "request": "x", "requiresAccessToken": requires_token,
                "output": [{"type": "Patient", "url": f"{b.origin}/files/p.ndjson"}], "error": []}
    a.routes["/status/1"] = _json(manifest)
    b.routes["/files/"] = lambda _r: (200, {"Content-Type": "application/fhir+ndjson"},
                                      b'{"resourceType":"Patient","id":"p1"}\n')


def test_export_files_follow_requires_access_token(servers: Callable[[], Recorder]) -> None:
    a, b = servers(), servers()
    _export_routes(a, b, requires_token=False)
    assert [r["id"] for r in _fetcher(a.origin).export(["Patient"])] == ["p1"]
    assert "authorization" not in b.seen[0][1]  # pre-signed style file: fetched without the token
    assert all(h["authorization"] == "Bearer secret-token" for _, h in a.seen)

    a2, b2 = servers(), servers()
    _export_routes(a2, b2, requires_token=True)
    with pytest.raises(FetchError, match="refused"):
        list(_fetcher(a2.origin).export(["Patient"]))
    assert b2.seen == []
    assert [r["id"] for r in _fetcher(a2.origin, credential_hosts=[b2.origin]).export(["Patient"])] == ["p1"]
    assert b2.seen[0][1]["authorization"] == "Bearer secret-token"


def test_subscriptions_client_scopes_the_token(servers: Callable[[], Recorder],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from middleware.cli.subscriptions import _client, ours

    a, b = servers(), servers()
    b.routes["/"] = _json({"resourceType": "Bundle", "type": "searchset"})
    a.routes["/Subscription"] = _json({"resourceType": "Bundle", "type": "searchset",
                                       "link": [{"relation": "next", "url": f"{b.origin}/Subscription?p=2"}]})
    monkeypatch.setenv("SUB_TOK", "secret-token")
    src = Source(name="s", kind="fhir", fhir=FhirSettings(base_url=a.origin, allow_private_network=True,
                                                          auth=FhirAuth(kind="bearer", token_env="SUB_TOK")))
    with _client(src) as http, pytest.raises(netpolicy.CredentialRefused):
        ours(http)
    assert a.seen[0][1]["authorization"] == "Bearer secret-token"
    assert b.seen == []
