"""The deliveries' HTTP transport: httpx's client API on aiohttp's connection pool (issue 16).

Connectors keep talking to an ``httpx.AsyncClient`` (requests, responses, auth, event hooks,
``httpx.MockTransport`` and respx in tests); only the bottom layer changes. httpcore's pool,
which httpx uses by default, cost about 1 ms of CPU per POST on the benchmark machine; aiohttp's
pool sends the same bytes for about a fifth of that (``bench/http_clients.py``, docs/benchmarks.md §10).

The promises of :mod:`middleware.netpolicy` (issue 8) hold as with ``AsyncGuardedTransport``:

* **the connect-time address check**: aiohttp asks :class:`GuardedResolver` for a name's
  addresses when it opens a connection; the resolver looks the name up once, refuses the
  connection if any address is refused by the policy and hands back only checked addresses,
  which aiohttp connects to (TLS SNI and certificate checks use the name). Literal addresses,
  which aiohttp never resolves, and metadata/local names are checked before each request
  (``NetPolicy.host_refusal``, a pure function of host and port, so memoised);
* **no redirects**: aiohttp never follows one; httpx follows them only when asked, and every hop
  comes back through this transport and its checks;
* **no proxy environment variables** (``trust_env=False``); aiohttp keeps no cookies (httpx's
  client-side cookie handling is as before);
* **TLS** verification with the given ``ssl.SSLContext`` (by default httpx's: certifi's CAs);
* **timeouts** from httpx's per-request ``Timeout``: ``pool`` bounds waiting for a free
  connection, ``connect`` bounds opening one (resolving included), ``read`` the wait for each
  chunk of the answer. aiohttp has no write timeout: the four summed bound the whole exchange
  (40 s for the deliveries' 10 s), so a receiver that stops reading a body cannot hold a send.

Errors come out as httpx's (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ...) with the
aiohttp or :class:`~middleware.netpolicy.PolicyRefused` error as their cause, so
``netpolicy.refusal_of`` and the connectors' outcome mapping see what they saw before.
Response bodies are read whole (deliveries get small answers), then decoded by httpx.
"""
from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from .. import netpolicy

__all__ = ["AioTransport", "GuardedResolver", "delivery_client"]


class GuardedResolver(AbstractResolver):
    """Resolves a name once and returns its addresses only if every one passes ``policy``."""

    def __init__(self, policy: netpolicy.NetPolicy) -> None:
        self.policy = policy

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        netpolicy.precheck(host, port, self.policy)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        return [{"hostname": host, "host": ip, "port": port, "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}
                for ip in netpolicy.checked_addresses(host, port, infos, self.policy)]

    async def close(self) -> None:
        return None


@functools.lru_cache(maxsize=1024)
def _host_refusal(policy: netpolicy.NetPolicy, host: str, port: int) -> str | None:
    return policy.host_refusal(host, port)


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    """aiohttp's and the policy's errors as httpx's, the original kept as the cause."""
    try:
        yield
    except netpolicy.PolicyRefused as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientError) as exc:
        raise httpx.ReadError(str(exc), request=request) from exc
    except asyncio.TimeoutError as exc:  # the ``total`` backstop (see :func:`_client_timeout`)
        raise httpx.WriteTimeout("the request did not complete in time", request=request) from exc


class AioTransport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport sending through an ``aiohttp.ClientSession`` under ``policy``.

    One session (and connection pool) per event loop: it is made on first use inside the running
    loop; a client reused from another loop (tests run one ``asyncio.run`` after another) gets a
    fresh pool, the old loop's connections being unusable anyway.
    """

    def __init__(self, policy: netpolicy.NetPolicy, *, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = 100, keepalive_expiry: float = 5.0) -> None:
        self.policy = policy
        self.ssl_context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            if self._session is not None and self._loop is not loop and not self._session.closed:
                self._session.connector._close()  # type: ignore[union-attr]  # its loop is gone: drop the sockets
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy), limit=self.max_connections,
                                             keepalive_timeout=self.keepalive_expiry, ssl=self.ssl_context)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                                  cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent", "Content-Type"))
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or netpolicy.default_port(url.scheme)
        refusal = _host_refusal(self.policy, url.host, port)
        if refusal is not None:
            raise httpx.ConnectError(f"outbound policy refuses {url.host}: {refusal}", request=request) \
                from netpolicy.PolicyRefused(f"outbound policy refuses {url.host}: {refusal}")
        body = await request.aread()
        with _as_httpx_errors(request):
            async with self._session_now().request(
                request.method, yarl.URL(str(url), encoded=True), data=body or None,
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw],
                allow_redirects=False, timeout=_timeout(request), compress=None, chunked=None,
            ) as resp:
                content = await resp.read()
                status, headers, reason, v = resp.status, resp.raw_headers, resp.reason, resp.version
                version = b"HTTP/1.1" if v is None or v == (1, 1) else f"HTTP/{v.major}.{v.minor}".encode()
        return httpx.Response(status, headers=list(headers), stream=httpx.ByteStream(content),
                              extensions={"http_version": version, "reason_phrase": (reason or "").encode()},
                              request=request)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            if self._loop is asyncio.get_running_loop():
                await self._session.close()
            else:
                self._session.connector._close()  # type: ignore[union-attr]
        self._session = None


def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
    """httpx's per-request timeouts as aiohttp's (``connect`` covers the pool wait and the connect)."""
    t: dict[str, float | None] = request.extensions.get("timeout", {})
    return _client_timeout(t.get("pool"), t.get("connect"), t.get("write"), t.get("read"))


@functools.lru_cache(maxsize=64)
def _client_timeout(pool: float | None, connect: float | None, write: float | None, read: float | None) -> aiohttp.ClientTimeout:
    """aiohttp has no write timeout; ``total`` (the four summed) is the backstop for a receiver that
    stops reading a large body, as httpx's ``write`` timeout was."""
    wait = None if pool is None or connect is None else pool + connect
    parts = (pool, connect, write, read)
    total = None if any(p is None for p in parts) else sum(p for p in parts if p is not None)
    return aiohttp.ClientTimeout(total=total, connect=wait, sock_connect=connect, sock_read=read)


def delivery_client(policy: netpolicy.NetPolicy, *, timeout: float = 10.0, **kwargs: Any) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` a destination's connector sends with: :class:`AioTransport` under
    ``policy``, no proxy environment variables, no redirect following."""
    kwargs.setdefault("follow_redirects", False)
    return httpx.AsyncClient(transport=AioTransport(policy), trust_env=False, timeout=timeout, **kwargs)
