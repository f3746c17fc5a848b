"""Request bodies read with a cap: refuse whole, never truncate and accept.

``Content-Length`` is checked before anything is read; a body without one (chunked) is
streamed and reading stops at the first byte past the cap, so a 200 MB body costs at most
the cap plus one chunk (Starlette's receive chunk, <= 64 KiB with uvicorn's flow control).
An oversize body keeps only a prefix of :data:`KEEP_PREFIX_BYTES` for the stored record.
The refusal carries ``Connection: close`` so uvicorn drops the connection instead of
reading and discarding the rest of the body.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Any

from fastapi import Request
from starlette.requests import ClientDisconnect

#: Bytes of a body's start that :func:`read_capped`'s ``narrow`` sees (BOM, blank lines and a segment id).
NARROW_PROBE_BYTES = 64
#: How much of a refused body is stored for inspection (64 KiB, like the MLLP framer's prefix).
KEEP_PREFIX_BYTES = 65_536

#: How long a body declared over the cap is read for its prefix: a sender that declares more
#: than it sends is answered after this, not after its whole declared length.
PREFIX_WAIT_S = 0.5

#: Headers that go with a 413: the connection is closed instead of draining the unread body.
CLOSE = {"Connection": "close"}


@dataclass(frozen=True)
class CappedBody:
    """A request body read with a cap.

    ``data`` is the whole body when ``oversize`` is false, else at most
    :data:`KEEP_PREFIX_BYTES` of its start. ``size`` is the declared length when the
    sender declared one over the cap, else the bytes read before stopping.
    """

    data: bytes
    oversize: bool
    size: int
    limit: int

    def reason(self, setting: str) -> str:
        """One line naming the limit and the setting that raises it (no body content)."""
        more = "" if self.size > self.limit else " or more"
        return f"body of {self.size}{more} bytes exceeds the {self.limit}-byte limit ({setting})"


def declared_length(request: Request) -> int | None:
    """The ``Content-Length`` as an int, or None when absent (uvicorn refuses malformed ones)."""
    value = request.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


async def read_capped(request: Request, limit: int, narrow: Callable[[bytes], int] | None = None) -> CappedBody:
    """Read the body, stopping past ``limit`` bytes; see :class:`CappedBody`.

    ``narrow``, when given, is asked once for the limit of this body from its first
    :data:`NARROW_PROBE_BYTES` bytes (e.g. an HL7 batch has a larger limit than one message);
    the answer is capped at ``limit``.
    """
    declared = declared_length(request)
    if declared is not None and declared > limit:
        prefix = b""
        if "100-continue" not in request.headers.get("expect", "").lower():
            prefix = await _prefix(request, KEEP_PREFIX_BYTES)
        return CappedBody(prefix, True, declared, limit)
    buf = bytearray()
    decided = narrow is None
    async for chunk in request.stream():
        buf += chunk
        if not decided and len(buf) >= NARROW_PROBE_BYTES:
            limit, decided = min(limit, narrow(bytes(buf[:NARROW_PROBE_BYTES]))), True  # type: ignore[misc]
        if len(buf) > limit:
            return CappedBody(bytes(buf[:KEEP_PREFIX_BYTES]), True, len(buf), limit)
    if not decided and narrow is not None:
        limit = min(limit, narrow(bytes(buf)))
        if len(buf) > limit:
            return CappedBody(bytes(buf[:KEEP_PREFIX_BYTES]), True, len(buf), limit)
    return CappedBody(bytes(buf), False, len(buf), limit)


async def _prefix(request: Request, keep: int) -> bytes:
    """Up to ``keep`` bytes of what arrives within :data:`PREFIX_WAIT_S`."""
    buf = bytearray()
    try:
        async with asyncio.timeout(PREFIX_WAIT_S):
            async for chunk in request.stream():
                buf += chunk
                if len(buf) >= keep:
                    break
    except (TimeoutError, ClientDisconnect):
        pass
    return bytes(buf[:keep])


class ApiBodyLimit:
    """ASGI middleware: request bodies on ``/api/`` over ``limit`` bytes get 413 (JSON), read with the
    same cap as :func:`read_capped` (``Content-Length`` first, then streamed), so FastAPI's own body
    parsing never holds more than ``limit`` bytes."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        body = bytearray()
        more = True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                await self.app(scope, _replay(bytes(body), receive, first=msg), send)
                return
            body += msg.get("body", b"")
            more = bool(msg.get("more_body", False))
            if len(body) > self.limit:
                await self._refuse(send, len(body))
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, send: Any, size: int) -> None:
        more = "" if size > self.limit else " or more"
        detail = (f"body of {size}{more} bytes exceeds the {self.limit}-byte limit "
                  "(CARELOOP_HTTP_MAX_API_BYTES)").encode()
        content = b'{"detail":"' + detail + b'"}'
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": content})


def _replay(body: bytes, receive: Any, first: dict[str, Any] | None = None) -> Any:
    """A ``receive`` that yields the buffered body once, then defers to the real one."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent, first
        if first is not None:
            msg, first = first, None
            return msg
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # type: ignore[no-any-return]

    return replay
