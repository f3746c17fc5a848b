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
* connections beyond ``max_connections`` (per listener) or ``max_connections_per_address``
  (per client address, after a PROXY protocol header) are closed on accept and counted
  (``stats.refused``); pausing an accepted connection is not enough (uvloop reads anyway);
* a frame (and a TLS handshake or PROXY header) must complete within ``frame_deadline_s`` of its
  first byte, however slowly its bytes trickle in; then the connection is closed;
* bytes held per connection (unfinished frame + frames waiting for storage) and in total are
  bounded: beyond ``max_buffered_bytes_per_connection`` reading pauses; beyond
  ``max_buffered_bytes_total`` a connection holding an unfinished frame is closed, others pause;
* bytes that are not HL7 are coalesced into one errored record per burst (``mllp_framing``);
  a complete non-HL7 frame ends its burst and is answered AE once that record is stored;
  after ``max_junk_frames`` of them the connection is closed as "not an HL7 peer".

The memory bound is stated in docs/operations.md.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast, Callable

from ..config.listeners import MllpListenerConfig, address_in, networks
from ..config.sources import Sources
from ..normalize.hl7_peek import Hl7Problem, Peek, peek
from ..storage.inbox import InboundRecord, InboxWriter, StoreResult
from .hl7_ack import build_ack
from .hl7_ingest import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, IngestAnswer, encode_ack, submit_hl7
from .mllp_framing import CR, EB, SB, Item, Junk, MllpFramer, Oversize, Truncated
from .mllp_tls import TlsContextSource, TlsError, TlsSession
from .proxy_header import ProxyHeaderError, parse_proxy_header

log = logging.getLogger("careloop.mllp")

_FRAME_END = EB + CR


@dataclass
class MllpStats:
    connections: int = 0
    open_connections: int = 0
    frames: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # connections closed on accept or at the header, by reason
    closed: dict[str, int] = field(default_factory=dict)  # connections closed by a limit later, by reason
    junk_records: int = 0
    junk_bytes: int = 0
    buffered_bytes: int = 0  # now, all connections of the listener


_PROXY_HEADER_MAX = 4096
_TRUNCATED_KEEP = 65536  # a v2 header with TLVs; longer is refused
_LOG_EVERY_S = 5.0
_NOT_HL7 = "not an HL7 v2 message"
_NEUTRAL = Peek(version="2.5")  # the answer to a frame with no MSH: HL7 v2.5 form, original mode, no MSA-2


class _ThrottledLog:
    """One log line per reason every few seconds, with the count since the last one (floods)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def __call__(self, action: str, reason: str, port: int) -> None:
        key = action + reason
        self._count[key] = self._count.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last.get(key, 0.0) >= _LOG_EVERY_S:
            log.warning("mllp connection %s: %s", action.split(".")[-1], reason,
                        extra={"action": action, "reason": reason, "port": port, "count": self._count[key]})
            self._last[key] = now
            self._count[key] = 0


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
        max_connections: int | None = None,
        max_inflight: int = 256,
        fault_hook: Callable[[str], None] | None = None,
        config: MllpListenerConfig | None = None,
        sources_now: Callable[[], Sources] | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_batch_messages: int = MAX_BATCH_MESSAGES,
    ) -> None:
        self._sources = sources
        self._sources_now = sources_now  # the running service's current sources (they change on reload)
        self.writer = writer
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_batch_bytes = max_batch_bytes  # an HL7 batch (FHS/BHS) frame; Settings.hl7_max_batch_bytes
        self.max_batch_messages = max_batch_messages
        self.idle_timeout_s = idle_timeout_s
        self.stats = MllpStats()
        self.fault_hook = fault_hook
        cfg = config or sources.listener(port)
        self.config = cfg
        # Memory bound (docs/operations.md): max_buffered_bytes_total + max_connections x
        # (one read chunk + the transport's write high-water mark + TLS state when on).
        self.max_connections = max_connections if max_connections is not None else cfg.max_connections
        self.max_per_address = cfg.max_connections_per_address
        self.frame_deadline_s = cfg.frame_deadline_s
        self.max_conn_bytes = cfg.max_buffered_bytes_per_connection
        self.max_total_bytes = cfg.max_buffered_bytes_total
        self.max_inflight = max_inflight
        self.tls = TlsContextSource(cfg.tls) if cfg.tls is not None else None
        self.proxy_trusted = networks(cfg.proxy_protocol.trusted) if cfg.proxy_protocol is not None else None
        self._active = 0
        self._per_address: dict[str, int] = {}
        self._paused_for_total: set[_MllpConnection] = set()
        self._conns: set[_MllpConnection] = set()  # open connections
        self._server: asyncio.base_events.Server | None = None
        self._log_limit = _ThrottledLog()

    @property
    def sources(self) -> Sources:
        """The sources frames are attributed with: the service's current set when it gave one
        (allow-lists and certificate subjects follow a reload; ports, limits and TLS need a restart)."""
        return self._sources_now() if self._sources_now is not None else self._sources

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

    # -- connection limits ----------------------------------------------------
    def _admit(self) -> str | None:
        """Take a listener slot; the refusal reason when there is none."""
        if self._active >= self.max_connections:
            return "listener connection cap"
        self._active += 1
        return None

    def _admit_address(self, addr: str) -> str | None:
        n = self._per_address.get(addr, 0)
        if n >= self.max_per_address:
            return "per-address connection cap"
        self._per_address[addr] = n + 1
        return None

    def _release(self, addr: str | None) -> None:
        self._active -= 1
        if addr is not None:
            n = self._per_address.get(addr, 1) - 1
            if n > 0:
                self._per_address[addr] = n
            else:
                self._per_address.pop(addr, None)

    def _refused(self, reason: str) -> None:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
        self._log_limit("mllp.refused", reason, self.port)

    def _closed_by_limit(self, reason: str) -> None:
        self.stats.closed[reason] = self.stats.closed.get(reason, 0) + 1
        self._log_limit("mllp.closed", reason, self.port)

    # -- buffered bytes ---------------------------------------------------------
    def _add_buffered(self, delta: int) -> None:
        self.stats.buffered_bytes += delta
        if delta < 0 and self._paused_for_total and self.stats.buffered_bytes < self.max_total_bytes:
            for conn in list(self._paused_for_total):
                self._paused_for_total.discard(conn)
                conn._update_reading()

    def over_total(self) -> bool:
        return self.stats.buffered_bytes >= self.max_total_bytes

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

    def _truncated_record(self, item: Truncated) -> InboundRecord:
        """An unfinished frame, its first 64 KiB kept: its sender got no ACK and resends it whole,
        and a peer closed by a limit must not turn each connection into a large stored row."""
        data = item.data[:_TRUNCATED_KEEP]
        more = f" ({len(item.data)} bytes, first {len(data)} kept)" if len(data) < len(item.data) else ""
        return self._problem_record(data, "truncated frame: " + item.reason + more)

    def _junk_record(self, item: Junk, ack: bytes | None = None) -> InboundRecord:
        text = f"{item.size} bytes outside MLLP frames or not HL7 (first {len(item.data)} kept, {item.dropped} dropped)"
        if item.frame:
            text += "; ends with a complete frame that is " + _NOT_HL7 + ", answered AE"
        self.stats.junk_records += 1
        self.stats.junk_bytes += item.size
        return self._problem_record(item.data, text, ack=ack)

    def _junk_ack(self) -> bytes:
        """AE with ERR (table 0357 code 100: the first segment is not MSH) and an empty MSA-2."""
        problem = Hl7Problem("100", _NOT_HL7, "MSH", 1)
        return encode_ack(build_ack(_NEUTRAL, "error", [problem]), _NEUTRAL)

    def _oversize(self, item: Oversize) -> tuple[InboundRecord, bytes]:
        text = f"message of {item.size} bytes exceeds the {self.max_message_bytes}-byte limit"
        p = peek(item.prefix)
        problem = Hl7Problem("100", text, "MSH", 1)
        ack = encode_ack(build_ack(p, "error", [problem]), p)
        return self._problem_record(item.prefix, text, ack=ack, p_control=p.control_id, p_type=p.message_type), ack


class _Slot:
    """One frame of a connection, in arrival order: answered (``done``) with ``ack`` or nothing."""

    __slots__ = ("done", "ack", "size")

    def __init__(self) -> None:
        self.done = False
        self.ack: bytes | None = None
        self.size = 0  # bytes of the frame held until it is answered


def _item_size(item: Item) -> int:
    if isinstance(item, bytes):
        return len(item)
    if isinstance(item, Oversize):
        return len(item.prefix)
    return len(item.data)


class _MllpConnection(asyncio.Protocol):
    """One MLLP connection: [PROXY header] -> [TLS handshake] -> frames.

    ``phase`` is ``proxy`` (waiting for the header), ``tls`` (handshake) or ``frames``.
    """

    def __init__(self, listener: MllpListener) -> None:
        self.listener = listener
        self.writer = listener.writer
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.framer = MllpFramer(listener.max_message_bytes, listener.config.junk_keep_bytes,
                                 max_batch_size=listener.max_batch_bytes, max_junk_frames=listener.config.max_junk_frames)
        self.rejected = False  # max_junk_frames reached: answer what is pending, then close
        self.slots: deque[_Slot] = deque()  # frames not yet answered, oldest first
        self.held: deque[Item] = deque()  # frames waiting for inbox room, oldest first
        self.admitted = False
        self.closed = False
        self.eof = False
        self.write_paused = False
        self.read_paused = False
        self.flush_scheduled = False
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.phase = "frames"
        self.peer: str | None = None  # the TCP peer (a balancer behind the PROXY protocol)
        self.client: str | None = None  # the client address limits and allow-lists apply to
        self.counted_address: str | None = None
        self.bound_source: str | None = None
        self.tls: TlsSession | None = None
        self.header = b""  # PROXY header bytes so far
        self.held_bytes = 0
        self.inflight_bytes = 0  # frames handed to the inbox, not yet answered
        self.buffered = 0  # this connection's share of the listener's buffered bytes

    # -- lifecycle -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's TCPTransport is not a subclass of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)
        listener = self.listener
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else None
        reason = listener._admit()
        if reason is not None:
            self._refuse(reason)  # closing is the only refusal uvloop honours (it reads a paused new transport)
            return
        self.admitted = True
        listener._conns.add(self)
        stats = listener.stats
        stats.connections += 1
        stats.open_connections += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.last_activity = self.loop.time()
        self._arm_idle(self.last_activity + listener.idle_timeout_s)
        if listener.proxy_trusted is not None:
            if self.peer is None or not address_in(self.peer, listener.proxy_trusted):
                self._refuse("PROXY protocol header from an untrusted address")
                return
            self.phase = "proxy"
            self._update_deadline()
            return
        self._client_known(self.peer)

    def _client_known(self, client: str | None) -> None:
        """The real client address is known: per-address cap, then TLS or the port's allow-list."""
        listener = self.listener
        self.client = client
        if client is not None:
            reason = listener._admit_address(client)
            if reason is not None:
                self._refuse(reason)
                return
            self.counted_address = client
        if listener.tls is not None:
            self.phase = "tls"
            self.tls = TlsSession(listener.tls.context())
        else:
            self.phase = "frames"
            owner = listener.sources.for_port(listener.port)
            self._bind(owner.name if owner is not None else None)
        self._update_deadline()

    def _bind(self, source: str | None) -> None:
        """Bind the connection to a source (port owner or certificate) and check its allow-list."""
        if self.closed:
            return
        sources = self.listener.sources
        src = sources.get(source) if source is not None else None
        if src is not None and not sources.allows(src, self.client):
            self._refuse("client address not in the source's allow_from")
            return
        self.bound_source = source

    def _refuse(self, reason: str) -> None:
        self.listener._refused(reason)
        self._abort()

    def _abort(self) -> None:
        assert self.transport is not None
        if not self.admitted:
            self.closed = True
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        listener = self.listener
        listener._conns.discard(self)
        listener._paused_for_total.discard(self)
        for timer in (self.idle_timer, self.deadline_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.deadline_timer = None
        if not self.admitted:
            return
        for item in self.framer.finish("connection closed before the end block"):
            self.held.append(item)
            self.held_bytes += _item_size(item)
        # frames still waiting for room are stored anyway (their sender may resend: a duplicate)
        self._submit_held(force=True)
        self._account()
        listener.stats.open_connections -= 1
        listener._release(self.counted_address)

    def eof_received(self) -> bool:
        # the peer finished sending: answer what it sent, then close (keep the write side open)
        self.eof = True
        if self.slots:
            return True
        return False

    # -- timers ---------------------------------------------------------------
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

    def _busy(self) -> bool:
        """A frame, a junk burst, a TLS handshake or a PROXY header is under way."""
        return self.phase != "frames" or self.framer.busy()

    def _update_deadline(self) -> None:
        """Arm the frame deadline at the first byte of a frame (not at every byte); disarm at its end."""
        if self.closed:
            return
        if self._busy():
            if self.deadline_timer is None:
                self.deadline_timer = self.loop.call_later(self.listener.frame_deadline_s, self._deadline_passed)
        elif self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None

    def _deadline_passed(self) -> None:
        self.deadline_timer = None
        if self.closed or not self._busy():
            return
        if self.read_paused and self.phase == "frames":
            # careloop stopped reading (storage, the peer's ACK reading): not the sender's delay
            self.deadline_timer = self.loop.call_later(self.listener.frame_deadline_s, self._deadline_passed)
            return
        what = {"proxy": "PROXY protocol header", "tls": "TLS handshake"}.get(self.phase, "frame")
        self.listener._closed_by_limit(f"{what} not complete within the frame deadline")
        self._abort()

    # -- reading ----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed or not self.admitted:
            return
        self.last_activity = self.loop.time()
        if self.phase == "proxy":
            data = self._read_proxy_header(data)
        if data and self.tls is not None and not self.closed:
            data = self._read_tls(data)
        if data and self.phase == "frames" and not self.closed:
            self._read_frames(data)
        if self.eof and not self.slots and not self.closed and self.transport is not None:
            self.transport.close()  # the TLS peer said close_notify and everything is answered
            return
        self._update_deadline()

    def _read_proxy_header(self, data: bytes) -> bytes:
        self.header += data
        try:
            header = parse_proxy_header(self.header)
        except ProxyHeaderError:
            header = None
            self._refuse("invalid PROXY protocol header")
            return b""
        if header is None:
            if len(self.header) > _PROXY_HEADER_MAX:
                self._refuse("invalid PROXY protocol header")
            return b""
        rest, self.header = self.header[header.length:], b""
        self._client_known(header.client or self.peer)
        return b"" if self.closed else rest

    def _read_tls(self, data: bytes) -> bytes:
        assert self.tls is not None and self.transport is not None
        try:
            out = self.tls.receive(data)
        except TlsError as exc:
            wire = self.tls.pending_wire()  # the alert, so the client learns why
            if wire:
                self.transport.write(wire)
            self.listener._refused("TLS handshake failed" if not self.tls.established else "TLS error")
            log.debug("tls failure", extra={"action": "mllp.tls_failed", "error_type": str(exc)})
            self.transport.close()
            return b""
        if out.wire:
            self.transport.write(out.wire)
        if not self.tls.established:
            return b""
        if self.phase == "tls":
            self.phase = "frames"
            names = self.tls.peer_names()
            sources = self.listener.sources
            chosen = sources.for_tls_subject(names) if names else None
            if chosen is None:
                chosen = sources.for_port(self.listener.port)
            self._bind(chosen.name if chosen is not None else None)
        if out.closed:
            self.eof = True  # close_notify: answer what was sent, then close (see data_received)
        return out.plaintext

    def _read_frames(self, data: bytes) -> None:
        items = self.framer.feed(data)
        writer = self.writer
        for item in items:
            if not isinstance(item, Junk) or item.frame:
                self.listener.stats.frames += 1
            if self.held or not writer.has_room():
                if not self.held:
                    writer.queue_waits += 1
                    writer.when_room(self._on_room)
                self.held.append(item)  # raw frame bytes only (~0.6 KB), not a prepared record (~4 KB)
                self.held_bytes += _item_size(item)
            else:
                self._submit(item)
        self._account()
        if self.framer.gave_up and not self.rejected:
            self._reject_peer()
            return
        self._enforce_buffer_caps()
        self._update_reading()

    def _reject_peer(self) -> None:
        """``max_junk_frames`` reached: stop reading, answer the frames pending, then close
        (the bytes after the last junk frame are one record, stored at close)."""
        self.rejected = True
        self.listener._closed_by_limit("not an HL7 peer (max_junk_frames)")
        self._update_reading()
        self._close_when_answered()

    def _close_when_answered(self) -> None:
        if self.rejected and not self.slots and not self.held and not self.closed and self.transport is not None:
            self.transport.close()

    def _enforce_buffer_caps(self) -> None:
        """Close a connection whose unfinished frame does not fit the per-connection or total cap."""
        listener = self.listener
        partial = self.framer.buffered()
        # an HL7 batch frame may grow to the batch limit (the total cap still bounds the listener)
        if partial > max(listener.max_conn_bytes, self.framer.frame_limit()):
            reason = "unfinished frame over max_buffered_bytes_per_connection"
        elif partial and listener.over_total():
            reason = "unfinished frame while the listener is over max_buffered_bytes_total"
        else:
            return
        listener._closed_by_limit(reason)
        self._abort()

    def _account(self) -> None:
        """Bring the listener's total of buffered bytes up to date with this connection's share."""
        now = (0 if self.closed else self.framer.buffered()) + self.held_bytes + self.inflight_bytes
        if now != self.buffered:
            delta, self.buffered = now - self.buffered, now
            self.listener._add_buffered(delta)

    def _submit(self, item: Item) -> None:
        """Start ``item`` with the connection's source bound (port, certificate, allow-list)."""
        size = _item_size(item)
        with self.listener.sources.bind(self.bound_source, self.client):
            self._start(item)
        self.slots[-1].size = size
        self.inflight_bytes += size

    def _start(self, item: Item) -> None:
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
                       answered=answered, max_batch_bytes=listener.max_batch_bytes,
                       max_batch_messages=listener.max_batch_messages)
            return
        elif isinstance(item, Oversize):
            rec, ack = listener._oversize(item)

            def answer_oversize(res: StoreResult, slot: _Slot = slot, ack: bytes = ack) -> None:
                stats.acks["error"] = stats.acks.get("error", 0) + 1
                slot.ack = ack
                slot.done = True
                self._schedule_flush()

            done: Callable[[StoreResult], None] = answer_oversize
        elif isinstance(item, Junk) and item.frame:
            junk_ack = listener._junk_ack()
            rec = listener._junk_record(item, junk_ack)

            def answer_junk(res: StoreResult, slot: _Slot = slot, ack: bytes = junk_ack) -> None:
                stats.acks["error"] = stats.acks.get("error", 0) + 1
                slot.ack = ack  # the burst ends with a complete frame: answered after its commit
                slot.done = True
                self._schedule_flush()

            done = answer_junk
        elif isinstance(item, Junk):
            rec = listener._junk_record(item)

            def unanswered_junk(res: StoreResult, slot: _Slot = slot) -> None:
                slot.done = True  # no answer: bytes outside frames have no frame to answer
                self._schedule_flush()

            done = unanswered_junk
        else:
            rec = listener._truncated_record(item)

            def unanswered_truncated(res: StoreResult, slot: _Slot = slot) -> None:
                slot.done = True
                self._schedule_flush()

            done = unanswered_truncated
        self.writer.submit(rec, done)

    def _on_room(self) -> None:
        self._submit_held()
        if self.held:  # still full: wait for the next round
            self.writer.when_room(self._on_room)
        self._account()
        self._update_reading()

    def _submit_held(self, force: bool = False) -> None:
        writer = self.writer
        held = self.held
        while held and (force or writer.has_room()):
            item = held.popleft()
            self.held_bytes -= _item_size(item)
            self._submit(item)

    def _update_reading(self) -> None:
        """Read unless too much is in flight, the peer is not reading its ACKs, or the inbox is full."""
        if self.closed or self.eof or not self.admitted or self.transport is None:
            return  # after EOF the transport has stopped reading for good
        listener = self.listener
        pause = (self.rejected or self.write_paused or bool(self.held) or len(self.slots) >= listener.max_inflight
                 or self.buffered >= listener.max_conn_bytes)
        if not pause and listener.over_total():
            pause = True  # woken by the listener when the total falls below its cap
            listener._paused_for_total.add(self)
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
        answered = 0
        while slots and slots[0].done:
            slot = slots.popleft()
            answered += slot.size
            if slot.ack:
                out.append(slot.ack)
        if answered:
            self.inflight_bytes -= answered
            self._account()
        if self.closed:
            return
        if out:
            hook = self.listener.fault_hook
            if hook:
                hook("mllp.before_ack")
            if len(out) == 1:
                self._write(SB + out[0] + _FRAME_END)
            else:
                self._write(b"".join(SB + a + _FRAME_END for a in out))
            self.last_activity = self.loop.time()
        if self.eof and not slots:
            assert self.transport is not None
            self.transport.close()
            return
        if self.rejected:
            self._close_when_answered()
            return
        self._update_reading()

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        if self.tls is None:
            self.transport.write(data)
            return
        try:
            self.transport.write(self.tls.send(data))
        except TlsError:
            self.transport.abort()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()

