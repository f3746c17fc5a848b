"""asyncio MLLP listener: many persistent connections, store-then-ACK, backpressure.

Each frame is stored durably (group commit across connections) before its ACK is
written; frames pipelined on one connection are stored in order and answered in
order. Framing problems (oversize, truncated) are stored as failed messages too.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from dataclasses import dataclass, field
from typing import Callable

from ..config.sources import Sources
from ..normalize.hl7_peek import Hl7Problem, peek
from ..storage.inbox import InboundRecord, InboxWriter
from .hl7_ack import build_ack
from .hl7_ingest import encode_ack, ingest_hl7
from .mllp_framing import CR, EB, SB, MllpFramer, Oversize, Truncated

log = logging.getLogger("careloop.mllp")


@dataclass
class MllpStats:
    connections: int = 0
    open_connections: int = 0
    frames: int = 0
    acks: dict[str, int] = field(default_factory=dict)


class MllpListener:
    def __init__(
        self,
        *,
        sources: Sources,
        writer: InboxWriter,
        host: str = "127.0.0.1",
        port: int = 2575,
        max_message_bytes: int = 1_048_576,
        idle_timeout_s: float = 600.0,
        max_connections: int = 512,
        fault_hook: Callable[[str], None] | None = None,
    ) -> None:
        self.sources = sources
        self.writer = writer
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.stats = MllpStats()
        self.fault_hook = fault_hook
        # Connections beyond the limit wait (unread, so TCP pushes back on the sender) for a slot.
        # Memory bound: max_connections x (read buffer 2 x 64 KiB + one frame up to max_message_bytes).
        self.max_connections = max_connections
        self._slots: asyncio.Semaphore | None = None
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Start listening; return the bound port (useful with port 0)."""
        self._slots = asyncio.Semaphore(self.max_connections)
        # limit: the StreamReader pauses the socket past 2 x limit buffered bytes (we read in 64 KiB chunks)
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=65536, backlog=512)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("mllp listening", extra={"action": "mllp.listen", "port": self.port})
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            await self._serve_connection(reader, writer)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.stats.connections += 1
        self.stats.open_connections += 1
        framer = MllpFramer(self.max_message_bytes)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), self.idle_timeout_s)
                except asyncio.TimeoutError:
                    log.info("idle timeout", extra={"action": "mllp.idle_close"})
                    break
                if not data:
                    break
                items = framer.feed(data)
                if not items:
                    continue
                # Every frame of this read is stored (group commit) before any ACK is written and
                # before the next read: the connection's in-flight work is bounded by one read.
                if len(items) == 1:
                    one = await self._one(items[0])
                    acks = [one] if one else []
                else:
                    acks = [a for a in await asyncio.gather(*(self._one(item) for item in items)) if a]
                if self.fault_hook:
                    self.fault_hook("mllp.before_ack")
                out = b"".join(SB + a + EB + CR for a in acks)
                if out:
                    writer.write(out)
                    await writer.drain()
            rest = framer.pending()
            if rest:
                await self._store_problem(rest, "truncated frame: connection closed before the end block")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.stats.open_connections -= 1
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:
                pass

    async def _one(self, item: bytes | Oversize | Truncated) -> bytes | None:
        self.stats.frames += 1
        if isinstance(item, bytes):
            ans = await ingest_hl7(item, channel="mllp", port=self.port, sources=self.sources, writer=self.writer)
            self.stats.acks[ans.kind] = self.stats.acks.get(ans.kind, 0) + 1
            return ans.ack
        if isinstance(item, Oversize):
            text = f"message of {item.size} bytes exceeds the {self.max_message_bytes}-byte limit"
            p = peek(item.prefix)
            problem = Hl7Problem("100", text, "MSH", 1)
            ack = encode_ack(build_ack(p, "error", [problem]), p)
            await self._store_problem(item.prefix, text, ack=ack, p_control=p.control_id, p_type=p.message_type)
            self.stats.acks["error"] = self.stats.acks.get("error", 0) + 1
            return ack
        await self._store_problem(item.data, "truncated frame: " + item.reason)
        return None

    async def _store_problem(
        self, data: bytes, reason: str, *, ack: bytes | None = None, p_control: str = "", p_type: str = ""
    ) -> None:
        rec = InboundRecord(
            source=self.sources.for_hl7(self.port, None, None).name,
            channel="mllp",
            raw=data,
            sha256=hashlib.sha256(data).hexdigest(),
            status="failed",
            error=reason,
            ack=ack,
            control_id=p_control or None,
            message_type=p_type or None,
        )
        await self.writer.store(rec)
