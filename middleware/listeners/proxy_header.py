"""PROXY protocol (v2 binary, v1 text) header in front of an MLLP connection (pure).

HAProxy's specification (``doc/proxy-protocol.txt``): v2 starts with a 12-byte signature,
a version/command byte, a family byte and a 2-byte length; v1 is one text line of at most
107 bytes. Parsing is delegated to the ``proxy-protocol`` package; this module only finds
where the header ends in a stream of bytes and turns the result into a client address.
"""
from __future__ import annotations

from dataclasses import dataclass

from proxyprotocol.detect import ProxyProtocolDetect
from proxyprotocol.result import is_ipv4, is_ipv6

_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_SIG = b"PROXY "
_V1_MAX = 107


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    length: int  # bytes the header took
    client: str | None  # the original client's address; None for LOCAL/UNKNOWN (the balancer itself)


def _header_length(buf: bytes) -> int | None:
    """Bytes of the header at the start of ``buf``, None if more are needed; raises on garbage."""
    if buf.startswith(_V2_SIG):
        if len(buf) < 16:
            return None
        need = 16 + int.from_bytes(buf[14:16], "big")
        return need if len(buf) >= need else None
    if buf.startswith(_V1_SIG):
        end = buf.find(b"\r\n", 0, _V1_MAX)
        if end >= 0:
            return end + 2
        if len(buf) >= _V1_MAX:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        return None
    if _V2_SIG.startswith(buf) or _V1_SIG.startswith(buf):
        return None  # a prefix of a signature
    raise ProxyHeaderError("no PROXY protocol signature")


def parse_proxy_header(buf: bytes) -> ProxyHeader | None:
    """The header at the start of ``buf``, or None until enough bytes arrived.

    Raises :class:`ProxyHeaderError` for anything that is not a well-formed v1/v2 header.
    """
    n = _header_length(buf)
    if n is None:
        return None
    try:
        result = ProxyProtocolDetect().unpack(bytes(buf[:n]))
    except Exception as exc:  # the library raises ValueError subclasses and its own errors
        raise ProxyHeaderError(str(exc) or type(exc).__name__) from exc
    if is_ipv4(result) or is_ipv6(result):
        return ProxyHeader(n, str(result.source[0]))
    return ProxyHeader(n, None)
