"""asyncio MLLP listener: many persistent connections, store-then-ACK, backpressure.

Each frame is stored durably (group commit across connections) before its ACK is
written; frames pipelined on one connection are stored in order and answered in
order. Framing problems (oversize, truncated) are stored as failed messages too.

The listener is an :class:`asyncio.Protocol` (no stream reader, no task per read): a
received chunk is framed, each frame is decided and handed to the inbox writer with a
callback, and when a commit answers the oldest frames of a connection their ACKs are
written in one ``transport.write``. Bounds on memory per connection:

* at most ``max_inflight`` frames waiting for their commit (then reading pauses);
* the transport's write buffer: when the peer does not read its ACKs, ``pause_writing``
  pauses reading too, so a slow reader holds at most its high-water mark of ACKs;
* the inbox queue: when it is full (``max_queue``), frames wait in their connection and
  reading pauses until the writer has room (``queue_waits`` counts it);
* connections beyond ``max_connections`` are accepted but not read until a slot frees.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import cast, Callable

from ..config.sources import Sources
from ..normalize.hl7_peek import Hl7Problem, peek
from ..storage.inbox import InboundRecord, InboxWriter, StoreResult
from .hl7_ack import build_ack
from .hl7_ingest import IngestAnswer, encode_ack, submit_hl7
from .mllp_framing import CR, EB, SB, MllpFramer, Oversize, Truncated

log = logging.getLogger("careloop.mllp")

_FRAME_END = EB + CR


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
        max_inflight: int = 256,
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
        # Memory bound: max_connections x (read chunk + one frame up to max_message_bytes
        # + max_inflight frames waiting for their commit + the transport's write high-water mark).
        self.max_connections = max_connections
        self.max_inflight = max_inflight
        self._active = 0
        self._waiting: deque[_MllpConnection] = deque()
        self._conns: set[_MllpConnection] = set()  # open connections (admitted or waiting)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Start listening; return the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _MllpConnection(self), self.host, self.port, backlog=512)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("mllp listening", extra={"action": "mllp.listen", "port": self.port})
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- connection slots ----------------------------------------------------
    def _admit(self, conn: _MllpConnection) -> bool:
        if self._active >= self.max_connections:
            self._waiting.append(conn)
            return False
        self._active += 1
        return True

    def _release(self) -> None:
        self._active -= 1
        while self._waiting and self._active < self.max_connections:
            conn = self._waiting.popleft()
            if conn.start():
                self._active += 1

    # -- what each frame is stored as and answered with ------------------------
    def _problem_record(self, data: bytes, reason: str, *, ack: bytes | None = None, p_control: str = "",
                        p_type: str = "") -> InboundRecord:
        return InboundRecord(
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

    def _oversize(self, item: Oversize) -> tuple[InboundRecord, bytes]:
        text = f"message of {item.size} bytes exceeds the {self.max_message_bytes}-byte limit"
        p = peek(item.prefix)
        problem = Hl7Problem("100", text, "MSH", 1)
        ack = encode_ack(build_ack(p, "error", [problem]), p)
        return self._problem_record(item.prefix, text, ack=ack, p_control=p.control_id, p_type=p.message_type), ack


class _Slot:
    """One frame of a connection, in arrival order: answered (``done``) with ``ack`` or nothing."""

    __slots__ = ("done", "ack")

    def __init__(self) -> None:
        self.done = False
        self.ack: bytes | None = None


class _MllpConnection(asyncio.Protocol):
    def __init__(self, listener: MllpListener) -> None:
        self.listener = listener
        self.writer = listener.writer
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.framer = MllpFramer(listener.max_message_bytes)
        self.slots: deque[_Slot] = deque()  # frames not yet answered, oldest first
        self.held: deque[bytes | Oversize | Truncated] = deque()  # frames waiting for inbox room, oldest first
        self.admitted = False
        self.closed = False
        self.eof = False
        self.write_paused = False
        self.read_paused = False
        self.flush_scheduled = False
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    # -- lifecycle -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's TCPTransport is not a subclass of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
        self.listener._conns.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.listener._admit(self):
            self.start()
        else:
            transport.pause_reading()  # no slot: TCP pushes back on the sender until one frees
            self.read_paused = True

    def start(self) -> bool:
        """The connection has a slot: count it, arm the idle timer, read."""
        if self.closed:
            return False
        self.admitted = True
        stats = self.listener.stats
        stats.connections += 1
        stats.open_connections += 1
        self.last_activity = self.loop.time()
        self._arm_idle(self.last_activity + self.listener.idle_timeout_s)
        self._update_reading()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.listener._conns.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if not self.admitted:
            return
        rest = self.framer.pending()
        if rest:
            self.held.append(Truncated(rest, "connection closed before the end block"))
        # frames still waiting for room are stored anyway (their sender may resend: a duplicate)
        self._submit_held(force=True)
        self.listener.stats.open_connections -= 1
        self.listener._release()

    def eof_received(self) -> bool:
        # the peer finished sending: answer what it sent, then close (keep the write side open)
        self.eof = True
        if self.slots:
            return True
        return False

    # -- idle timeout ---------------------------------------------------------
    def _arm_idle(self, when: float) -> None:
        self.idle_timer = self.loop.call_at(when, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        due = self.last_activity + self.listener.idle_timeout_s
        if self.slots or self.read_paused:
            # not idle: waiting for a commit or for the peer to read (the old listener did not time these)
            self._arm_idle(self.loop.time() + self.listener.idle_timeout_s)
            return
        if due > self.loop.time():
            self._arm_idle(due)
            return
        log.info("idle timeout", extra={"action": "mllp.idle_close"})
        assert self.transport is not None
        self.transport.close()

    # -- reading ----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        items = self.framer.feed(data)
        if not items:
            return
        writer = self.writer
        for item in items:
            self.listener.stats.frames += 1
            if self.held or not writer.has_room():
                if not self.held:
                    writer.queue_waits += 1
                    writer.when_room(self._on_room)
                self.held.append(item)  # raw frame bytes only (~0.6 KB), not a prepared record (~4 KB)
            else:
                self._start(item)
        self._update_reading()

    def _start(self, item: bytes | Oversize | Truncated) -> None:
        """Give the frame its place in the ACK order, decide its answer, hand it to the inbox."""
        listener = self.listener
        stats = listener.stats
        slot = _Slot()
        self.slots.append(slot)
        if isinstance(item, bytes):
            def answered(ans: IngestAnswer, slot: _Slot = slot) -> None:
                acks = stats.acks
                acks[ans.kind] = acks.get(ans.kind, 0) + 1
                slot.ack = ans.ack
                slot.done = True
                self._schedule_flush()

            # a message or a batch (one response batch after all its messages are stored)
            submit_hl7(item, channel="mllp", port=listener.port, sources=listener.sources, writer=self.writer,
                       answered=answered)
            return
        elif isinstance(item, Oversize):
            rec, ack = listener._oversize(item)

            def done(res: StoreResult, slot: _Slot = slot, ack: bytes = ack) -> None:
                stats.acks["error"] = stats.acks.get("error", 0) + 1
                slot.ack = ack
                slot.done = True
                self._schedule_flush()

        else:
            rec = listener._problem_record(item.data, "truncated frame: " + item.reason)

            def done(res: StoreResult, slot: _Slot = slot) -> None:
                slot.done = True
                self._schedule_flush()

        self.writer.submit(rec, done)

    def _on_room(self) -> None:
        self._submit_held()
        if self.held:  # still full: wait for the next round
            self.writer.when_room(self._on_room)
        self._update_reading()

    def _submit_held(self, force: bool = False) -> None:
        writer = self.writer
        held = self.held
        while held and (force or writer.has_room()):
            self._start(held.popleft())

    def _update_reading(self) -> None:
        """Read unless too much is in flight, the peer is not reading its ACKs, or the inbox is full."""
        if self.closed or self.eof or not self.admitted or self.transport is None:
            return  # after EOF the transport has stopped reading for good
        pause = self.write_paused or bool(self.held) or len(self.slots) >= self.listener.max_inflight
        if pause != self.read_paused:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # -- writing ----------------------------------------------------------------
    def _schedule_flush(self) -> None:
        # called from the writer's answer to a batch: one write per connection per commit,
        # however many of its frames the batch held, once the whole batch is answered
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.writer.after_batch(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        slots = self.slots
        out: list[bytes] = []
        while slots and slots[0].done:
            ack = slots.popleft().ack
            if ack:
                out.append(ack)
        if self.closed:
            return
        if out:
            hook = self.listener.fault_hook
            if hook:
                hook("mllp.before_ack")
            assert self.transport is not None
            if len(out) == 1:
                self.transport.write(SB + out[0] + _FRAME_END)
            else:
                self.transport.write(b"".join(SB + a + _FRAME_END for a in out))
            self.last_activity = self.loop.time()
        if self.eof and not slots:
            assert self.transport is not None
            self.transport.close()
            return
        self._update_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

