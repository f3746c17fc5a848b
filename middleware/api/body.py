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

from fastapi import Request
from starlette.requests import ClientDisconnect

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


async def read_capped(request: Request, limit: int) -> CappedBody:
    """Read the body, stopping past ``limit`` bytes; see :class:`CappedBody`."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        prefix = b""
        if "100-continue" not in request.headers.get("expect", "").lower():
            prefix = await _prefix(request, KEEP_PREFIX_BYTES)
        return CappedBody(prefix, True, declared, limit)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
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
