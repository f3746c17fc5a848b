"""Outbound address policy: where careloop may open a connection, and to whom credentials go.

A leaf module (stdlib, httpx and httpcore only). Three parts:

* **Classification** of an IP address (:func:`classify`): ``forbidden`` (link-local and
  cloud metadata addresses, multicast, reserved: always refused), ``private`` (loopback,
  RFC 1918, unique-local, CGNAT, ``0.0.0.0``: refused unless the destination or source says
  ``allow_private_network: true``) or ``public``. IPv6 addresses that embed an IPv4 address
  (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible, 6to4, NAT64 ``64:ff9b::/96``) are judged by
  the embedded address too.
* **Host spellings** (:func:`parse_ip_literal`): besides dotted decimal and IPv6 (with or
  without brackets and a zone id), the inet_aton forms a resolver accepts are recognised:
  one to four parts, each decimal, octal (leading ``0``) or hex (``0x``), the last part
  filling the remaining bytes — ``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376``,
  ``169.254.43518``, ``169.16689662``, and a trailing dot.
* **Connect-time pinning**: :class:`GuardedBackend` / :class:`AsyncGuardedBackend` are httpcore
  network backends whose ``connect_tcp`` resolves the host once, checks every resolved
  address and connects to the checked address (no second lookup, so no DNS rebinding).
  TLS SNI and certificate checks still use the host name (httpcore passes it to
  ``start_tls``). :func:`guarded_client` / :func:`guarded_async_client` build httpx clients on
  them with ``trust_env=False`` (no proxy environment variables) and no redirect following.
  :func:`precheck` and :func:`checked_addresses` are the two steps, for other transports
  (the deliveries' aiohttp one, ``middleware.delivery.transport``).

Credential scoping: :class:`CredentialScope` lists the origins (scheme, host, port) that may
receive a source's credentials; :class:`ScopedBearer` is an ``httpx.Auth`` that adds the
token only there and refuses the request anywhere else.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import unicodedata
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

log = logging.getLogger("careloop.netpolicy")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Verdict = Literal["public", "private", "forbidden"]

_net = ipaddress.ip_network
#: Never a destination, whatever the config says: link-local (cloud metadata lives at
#: 169.254.169.254 / fd00:ec2::254), Alibaba's 100.100.100.200, Azure's wire server
#: 168.63.129.16, multicast, the reserved 240/4 (with the broadcast address).
FORBIDDEN_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    _net("169.254.0.0/16"), _net("100.100.100.200/32"), _net("168.63.129.16/32"),
    _net("224.0.0.0/4"), _net("240.0.0.0/4"),
    _net("fe80::/10"), _net("fd00:ec2::254/128"), _net("ff00::/8"),
)
#: Refused unless ``allow_private_network: true``: this host, private and shared address space.
PRIVATE_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    _net("0.0.0.0/8"), _net("127.0.0.0/8"), _net("10.0.0.0/8"), _net("172.16.0.0/12"),
    _net("192.168.0.0/16"), _net("100.64.0.0/10"), _net("192.0.0.0/24"), _net("198.18.0.0/15"),
    _net("::/128"), _net("::1/128"), _net("fc00::/7"), _net("fec0::/10"),
)
#: Names of metadata services refused before any lookup (others are caught on the resolved address).
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata.azure.internal",
                            "instance-data", "instance-data.ec2.internal"})
_NAT64 = (_net("64:ff9b::/96"), _net("64:ff9b:1::/48"))
_LOCAL_NAMES = ("localhost",)
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


class PolicyRefused(Exception):
    """The outbound policy refuses this host or address; the message names the host, never a path or query."""


def _inet_aton_part(part: str) -> int | None:
    """One part of an inet_aton address (decimal, ``0``-octal or ``0x``-hex), or ``None``."""
    if part[:2].lower() == "0x":
        digits, base = part[2:], 16
        if digits == "":
            return 0
    elif len(part) > 1 and part.startswith("0"):
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits or not all(c in _DIGITS[base] for c in digits):
        return None
    return int(digits, base)


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address an inet_aton-style spelling denotes, or ``None`` when ``host`` is not one."""
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not 1 <= len(parts) <= 4 or any(p == "" for p in parts):
        return None
    nums = [_inet_aton_part(p) for p in parts]
    if any(n is None for n in nums):
        return None
    values = [n for n in nums if n is not None]
    *head, last = values
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(values)):
        return None
    total = last
    for i, n in enumerate(head):
        total += n << (8 * (3 - i))
    return ipaddress.IPv4Address(total)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (any form above, after NFKC normalisation, so fullwidth digits
    and dots count), or ``None`` for a name."""
    h = unicodedata.normalize("NFKC", host).strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h.split("%", 1)[0])
        except ValueError:
            return None
    return parse_ipv4_loose(h)


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside an IPv6 one (mapped, compatible, 6to4, NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    packed = int(addr)
    if packed >> 32 == 0 and packed > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if packed >> 32 == 0xFFFF0000:  # IPv4-translated ::ffff:0:a.b.c.d
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if any(addr in n for n in _NAT64):
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


def _verdict_of(addr: IPAddress) -> Verdict:
    if any(addr in n for n in FORBIDDEN_NETWORKS if n.version == addr.version):
        return "forbidden"
    if any(addr in n for n in PRIVATE_NETWORKS if n.version == addr.version):
        return "private"
    return "public"


def classify(addr: IPAddress) -> Verdict:
    """``forbidden``, ``private`` or ``public``; an embedded IPv4 address makes it at least as strict."""
    verdict = _verdict_of(addr)
    inner = embedded_ipv4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
    if inner is not None:
        order = ("public", "private", "forbidden")
        verdict = max(verdict, _verdict_of(inner), key=order.index)
    return verdict


def _is_this_host(addr: IPAddress) -> bool:
    inner = embedded_ipv4(addr) if isinstance(addr, ipaddress.IPv6Address) else None
    return any(a.is_loopback or a.is_unspecified for a in (addr, inner) if a is not None)


@dataclass(frozen=True)
class NetPolicy:
    """What one destination or source may connect to.

    ``allow_private`` admits loopback and private ranges; ``own_ports`` are careloop's own
    listening ports, refused on this host's addresses even then.
    """

    allow_private: bool = False
    own_ports: frozenset[int] = field(default_factory=frozenset)

    def address_refusal(self, addr: IPAddress, port: int | None) -> str | None:
        """Why ``addr:port`` is refused, or ``None`` when it may be used."""
        verdict = classify(addr)
        if verdict == "forbidden":
            return f"{addr} is a link-local, metadata or reserved address (always refused)"
        if _is_this_host(addr) and port is not None and port in self.own_ports:
            return f"port {port} on this host is careloop's own listener"
        if verdict == "private" and not self.allow_private:
            return f"{addr} is a loopback or private address (set allow_private_network: true to allow it)"
        return None

    def host_refusal(self, host: str, port: int | None) -> str | None:
        """Why ``host`` is refused before any lookup (literal addresses, metadata and local names)."""
        addr = parse_ip_literal(host)
        if addr is not None:
            return self.address_refusal(addr, port)
        name = unicodedata.normalize("NFKC", host).strip().rstrip(".").lower()
        if name in METADATA_NAMES:
            return f"{name} is a cloud metadata service (always refused)"
        if name in _LOCAL_NAMES or name.endswith(".localhost"):
            reason = self.address_refusal(ipaddress.IPv4Address("127.0.0.1"), port)
            return reason.replace("127.0.0.1", name) if reason else None
        return None


def policy(allow_private: bool, *own_ports: int) -> NetPolicy:
    """A :class:`NetPolicy`; ``own_ports`` are careloop's listening ports (0, unbound, is skipped)."""
    return NetPolicy(allow_private=allow_private, own_ports=frozenset(p for p in own_ports if p))


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def url_refusal(url: str, policy: NetPolicy) -> str | None:
    """Why ``url`` cannot be a destination: not http(s), no host, or a refused host; ``None`` if fine."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} is not allowed (http or https only)"
    host = parts.hostname
    if not host:
        return "the URL has no host"
    return policy.host_refusal(host, port if port is not None else default_port(parts.scheme))


# -- connect-time pinning -------------------------------------------------------------------
def refusal_of(exc: BaseException) -> str | None:
    """The policy refusal behind a transport error (httpx keeps it as the cause chain), or ``None``."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, PolicyRefused):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def checked_addresses(host: str, port: int, infos: Iterable[tuple[Any, ...]], policy: NetPolicy) -> list[str]:
    """The resolved addresses of ``host`` if every one passes ``policy``; raises :class:`PolicyRefused`."""
    addrs: list[str] = []
    for info in infos:
        ip = str(info[4][0])
        reason = policy.address_refusal(ipaddress.ip_address(ip.split("%", 1)[0]), port)
        if reason is not None:
            log.warning("outbound connection to %s refused: %s", host, reason, extra={"action": "netpolicy.refused"})
            raise PolicyRefused(f"outbound policy refuses {host}: {reason}")
        if ip not in addrs:
            addrs.append(ip)
    if not addrs:
        raise PolicyRefused(f"outbound policy: {host} did not resolve")
    return addrs


def precheck(host: str, port: int, policy: NetPolicy) -> None:
    """Raise :class:`PolicyRefused` (and log it) when ``host`` is refused before any lookup."""
    reason = policy.host_refusal(host, port)
    if reason is not None:
        log.warning("outbound connection to %s refused: %s", host, reason, extra={"action": "netpolicy.refused"})
        raise PolicyRefused(f"outbound policy refuses {host}: {reason}")


class GuardedBackend(httpcore.NetworkBackend):
    """A sync httpcore backend that resolves once, checks, and connects to the checked address."""

    def __init__(self, policy: NetPolicy, inner: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        try:
            precheck(host, port, self.policy)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs = checked_addresses(host, port, infos, self.policy)
        except (PolicyRefused, OSError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        last: Exception | None = None
        for ip in addrs:
            try:
                return self._inner.connect_tcp(ip, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"could not connect to {host}")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The async twin of :class:`GuardedBackend` (anyio, so asyncio and uvloop alike)."""

    def __init__(self, policy: NetPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            precheck(host, port, self.policy)
            with anyio.fail_after(timeout):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addrs = checked_addresses(host, port, infos, self.policy)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except (PolicyRefused, OSError) as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        last: Exception | None = None
        for ip in addrs:
            try:
                return await self._inner.connect_tcp(ip, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"could not connect to {host}")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pool_args(limits: httpx.Limits, ssl_context: ssl.SSLContext) -> dict[str, Any]:
    return {"ssl_context": ssl_context, "max_connections": limits.max_connections,
            "max_keepalive_connections": limits.max_keepalive_connections,
            "keepalive_expiry": limits.keepalive_expiry}


class GuardedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections go through :class:`GuardedBackend`; never a proxy."""

    def __init__(self, policy: NetPolicy, *, verify: ssl.SSLContext | bool = True,
                 limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)) -> None:
        super().__init__(verify=verify, limits=limits, trust_env=False)
        ctx = httpx.create_ssl_context(verify=verify, trust_env=False)
        self._pool = httpcore.ConnectionPool(network_backend=GuardedBackend(policy), **_pool_args(limits, ctx))


class AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    """The async twin of :class:`GuardedTransport`."""

    def __init__(self, policy: NetPolicy, *, verify: ssl.SSLContext | bool = True,
                 limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)) -> None:
        super().__init__(verify=verify, limits=limits, trust_env=False)
        ctx = httpx.create_ssl_context(verify=verify, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(network_backend=AsyncGuardedBackend(policy), **_pool_args(limits, ctx))


def guarded_client(policy: NetPolicy, **kwargs: Any) -> httpx.Client:
    """An ``httpx.Client`` under ``policy``: pinned connections, no proxy env vars, no redirects."""
    kwargs.setdefault("follow_redirects", False)
    return httpx.Client(transport=GuardedTransport(policy), trust_env=False, **kwargs)


def guarded_async_client(policy: NetPolicy, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` under ``policy`` (see :func:`guarded_client`)."""
    kwargs.setdefault("follow_redirects", False)
    return httpx.AsyncClient(transport=AsyncGuardedTransport(policy), trust_env=False, **kwargs)


# -- credential scope -------------------------------------------------------------------------
Origin = tuple[str, str, int]


def origin_of(url: str | httpx.URL) -> Origin:
    """(scheme, lower-case host, port with the scheme's default filled in)."""
    u = httpx.URL(str(url))
    return (u.scheme, u.host.lower(), u.port or default_port(u.scheme))


class CredentialRefused(Exception):
    """A request that would carry credentials to an origin outside the source's scope."""


@dataclass(frozen=True)
class CredentialScope:
    """The origins that may receive a source's credentials: its base URL's, plus those listed."""

    origins: frozenset[Origin]

    @classmethod
    def of(cls, base_url: str, extra: Iterable[str] = ()) -> "CredentialScope":
        return cls(frozenset({origin_of(base_url), *(origin_of(u) for u in extra)}))

    def permits(self, url: str | httpx.URL) -> bool:
        try:
            return origin_of(url) in self.origins
        except (httpx.InvalidURL, ValueError):
            return False


class ScopedBearer(httpx.Auth):
    """Adds ``Authorization: Bearer`` from ``token()`` only to requests inside ``scope``.

    A request to any other origin is refused with :class:`CredentialRefused` (logged with
    the host only) instead of being sent without or with the credential.
    """

    def __init__(self, token: Callable[[], str | None], scope: CredentialScope) -> None:
        self._token = token
        self.scope = scope

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if not self.scope.permits(request.url):
            log.warning("request to %s refused: outside the credential scope", request.url.host,
                        extra={"action": "netpolicy.credential_refused"})
            raise CredentialRefused(f"refused: {request.url.host} is outside this source's credential scope "
                                    "(base URL origin or credential_hosts)")
        tok = self._token()
        if tok:
            request.headers["Authorization"] = f"Bearer {tok}"
        yield request
