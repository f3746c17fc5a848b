"""MLLP framing (pure): ``0x0B`` payload ``0x1C 0x0D``.

Tolerates NULs, CR/LF and stray end blocks between frames, a trailing LF after the end
block, a missing CR, frames split across reads and several frames in one read. A frame
larger than the limit is reported as :class:`Oversize` (with its first bytes, so it can be
stored and answered); a start block inside an unfinished frame reports the unfinished one
as :class:`Truncated`. A frame holding an HL7 batch (it starts with FHS or BHS) has its own
limit, ``max_batch_size`` (``Settings.hl7_max_batch_bytes``).

Bytes that are not HL7 are *junk*: anything outside frames other than the separators
above, and frames (complete, unfinished or oversize) whose first 256 bytes carry no
``MSH``, ``FHS`` or ``BHS`` header (first, in ASCII, UTF-8, UTF-16 or UTF-32, or after a line
end) and that do not begin like an
HL7 segment (three letters or digits and a delimiter, after a BOM or whitespace): random
bytes, a port scanner, TLS or HTTP sent to the plain port. Consecutive junk is one *burst*,
reported once as :class:`Junk` with its first ``junk_keep`` bytes intact and the size of the
whole burst, so a megabyte of random bytes is a few records, not one per stray ``0x0B``.
A burst ends when the next HL7 item arrives, at :meth:`MllpFramer.finish`, or with a
*complete* non-HL7 frame (start block ... end block): that frame is the burst's last part
and the :class:`Junk` has ``frame=True`` — the listener answers it (AE), once its record is
stored. Bytes outside frames get no answer (there is no frame to answer).
After ``max_junk_frames`` complete non-HL7 frames the framer gives up (:attr:`MllpFramer.gave_up`,
"not an HL7 peer"): every later byte joins one last burst, reported at :meth:`MllpFramer.finish`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

SB = b"\x0b"
EB = b"\x1c"
CR = b"\x0d"

_SEPARATORS = b"\x00\t\n\r \x1c"  # between frames: not junk (NUL padding, CR/LF, a doubled end block)
_HEADERS = ("MSH", "FHS", "BHS")
_LEAD = b"\xef\xbb\xbf\xff\xfe\x00\t\r\n "  # BOMs, NULs (UTF-16/32 high bytes) and whitespace before a header
_AFTER_CR = tuple(b"\r" + h.encode() for h in _HEADERS) + tuple(b"\n" + h.encode() for h in _HEADERS)
_PROBE = 256
# a segment ID and a delimiter, then ASCII text (up to 16 bytes are checked): random bytes pass with p ~ 1e-10
_SEGMENT_START = re.compile(rb"[\xef\xbb\xbf\xff\xfe\x00\t\r\n ]*[A-Z][A-Z0-9]{2}[!-/:-@\[-`{-~]")
_TEXT = re.compile(rb"[\t\r\n\x20-\x7e]*\Z")
_PREFIX = 65536  # bytes of an oversize frame kept for its record
#: the batch limit when the framer is not given one (the default of ``Settings.hl7_max_batch_bytes``)
DEFAULT_MAX_BATCH_BYTES: Final = 16_777_216
_BATCH_HEADS = (b"FHS", b"BHS", b"\xef\xbb\xbfFHS", b"\xef\xbb\xbfBHS")


@dataclass(frozen=True)
class Oversize:
    prefix: bytes
    size: int


@dataclass(frozen=True)
class Truncated:
    data: bytes
    reason: str


@dataclass(frozen=True)
class Junk:
    """One burst of non-HL7 bytes: the first bytes kept as received, and the whole burst's size."""

    data: bytes
    size: int
    frame: bool = False  # the burst ends with a complete non-HL7 frame, which is answered

    @property
    def dropped(self) -> int:
        return self.size - len(self.data)


Item = bytes | Oversize | Truncated | Junk


def frame(payload: bytes) -> bytes:
    """Wrap one message for the wire."""
    return SB + payload + EB + CR


def looks_like_hl7(payload: bytes) -> bool:
    """Whether a frame's first 256 bytes hold an MSH/FHS/BHS header in any encoding HL7 allows,
    or the frame begins like a segment (``PID|``): such a frame is answered, even with AE."""
    head = payload[:_PROBE]
    if head.lstrip(_LEAD)[:16].replace(b"\x00", b"")[:3].decode("latin-1") in _HEADERS:
        return True  # MSH/FHS/BHS first, in ASCII, UTF-8 (with BOM), UTF-16 or UTF-32
    if any(sig in head for sig in _AFTER_CR):
        return True  # a header after a stray line
    m = _SEGMENT_START.match(head)
    return m is not None and _TEXT.match(head[m.end():m.end() + 16]) is not None


class MllpFramer:
    """Feed received bytes; get complete frames (payload bytes), framing problems and junk bursts."""

    def __init__(self, max_size: int = 1_048_576, junk_keep: int = 65536, max_batch_size: int | None = None,
                 max_junk_frames: int | None = None) -> None:
        self.max_size = max_size
        self.max_junk_frames = max_junk_frames  # None: never give up
        self.junk_frames = 0  # complete non-HL7 frames so far
        self.gave_up = False  # max_junk_frames reached: the rest is one junk burst
        self.max_batch_size = max(max_size, DEFAULT_MAX_BATCH_BYTES if max_batch_size is None else max_batch_size)
        self.junk_keep = junk_keep
        self._buf = bytearray()
        self._in_frame = False
        self._discarding = 0  # bytes of an oversize frame skipped so far
        self._oversize_prefix = b""
        self._junk = bytearray()
        self._junk_size = 0

    # -- state the listener reads ------------------------------------------------
    def busy(self) -> bool:
        """Inside a frame or a junk burst (the frame deadline runs)."""
        return self._in_frame or self._junk_size > 0

    def buffered(self) -> int:
        """Bytes held: the unfinished frame (or an oversize frame's prefix) and the kept junk."""
        return len(self._buf) + len(self._oversize_prefix) + len(self._junk)

    # -- junk ----------------------------------------------------------------------
    def _add_junk(self, data: bytes | bytearray) -> None:
        if not data or (not self._junk_size and not bytes(data).strip(_SEPARATORS)):
            return
        room = self.junk_keep - len(self._junk)
        if room > 0:
            self._junk += data[:room]
        self._junk_size += len(data)

    def _take_junk(self, out: list[Item], frame: bool = False) -> None:
        if self._junk_size:
            out.append(Junk(bytes(self._junk), self._junk_size, frame))
            self._junk.clear()
            self._junk_size = 0

    def _emit(self, out: list[Item], item: Item, probe: bytes, size: int, tail: bytes = b"",
              complete: bool = False) -> None:
        """An HL7 item goes out after the junk before it; a non-HL7 one (``size`` bytes of which
        ``probe`` is the start, then ``tail``) joins the burst with its start block, and a
        complete one (its end block seen) ends the burst, to be answered."""
        if looks_like_hl7(probe):
            self._take_junk(out)
            out.append(item)
            return
        self._add_junk(SB + probe + tail)
        self._junk_size += size - len(probe)  # an oversize frame's bytes beyond its prefix
        if complete:
            self._take_junk(out, frame=True)
            self.junk_frames += 1
            if self.max_junk_frames is not None and self.junk_frames >= self.max_junk_frames:
                self.gave_up = True

    # -- framing ---------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Item]:
        out: list[Item] = []
        self._buf += data
        while True:
            if self.gave_up:  # not an HL7 peer: keep the rest as one burst, frame nothing more
                self._add_junk(self._buf)
                self._buf.clear()
                self._in_frame = False
                return out
            if not self._in_frame:
                i = self._buf.find(SB)
                if i < 0:
                    self._add_junk(self._buf)
                    self._buf.clear()
                    return out
                self._add_junk(self._buf[:i])
                del self._buf[: i + 1]
                self._in_frame = True
                self._discarding = 0
            if self._discarding:
                if not self._finish_oversize(out):
                    return out
                continue
            j = self._buf.find(EB)
            k = self._buf.find(SB)
            if 0 <= k and (j < 0 or k < j):
                part = bytes(self._buf[:k])
                self._emit(out, Truncated(part, "a new start block arrived before the end block"), part, len(part))
                del self._buf[:k]
                self._in_frame = False
                continue
            if j < 0:
                if len(self._buf) > self._limit():
                    self._oversize_prefix = bytes(self._buf[:_PREFIX])
                    self._discarding = len(self._buf)
                    self._buf.clear()
                return out
            # consume EB and an optional CR (a missing CR is tolerated)
            end = j + 1
            if end < len(self._buf) and self._buf[end : end + 1] == CR:
                end += 1
            tail = bytes(self._buf[j:end])
            if j > self._limit():
                prefix = bytes(self._buf[:_PREFIX])
                self._emit(out, Oversize(prefix, j), prefix, j, tail, complete=True)
            else:
                payload = bytes(self._buf[:j])
                self._emit(out, payload, payload, j, tail, complete=True)
            del self._buf[:end]
            self._in_frame = False

    def frame_limit(self) -> int:
        """The limit of the unfinished frame being read (0 outside a frame)."""
        return self._limit() if self._in_frame else 0

    def _limit(self) -> int:
        """The size limit of the frame being read: the batch limit when it starts like a batch."""
        if self.max_batch_size > self.max_size and bytes(self._buf[:16]).lstrip(b"\r\n\x00 \t").startswith(_BATCH_HEADS):
            return self.max_batch_size
        return self.max_size

    def _finish_oversize(self, out: list[Item]) -> bool:
        """Skip an oversize frame's bytes; report it once its end block arrives (True)."""
        j = self._buf.find(EB)
        if j < 0:
            self._discarding += len(self._buf)
            self._buf.clear()
            return False
        self._discarding += j
        prefix = self._oversize_prefix
        self._emit(out, Oversize(prefix, self._discarding), prefix, self._discarding, EB, complete=True)
        del self._buf[: j + 1]
        self._in_frame = False
        self._discarding = 0
        self._oversize_prefix = b""
        return True

    def pending(self) -> bytes | None:
        """Bytes of an unfinished frame (at connection close)."""
        if self._in_frame and (self._buf or self._discarding):
            return bytes(self._buf) if not self._discarding else self._oversize_prefix
        return None

    def finish(self, reason: str) -> list[Item]:
        """At connection close: the unfinished frame (as :class:`Truncated` with ``reason``, or junk)
        and the last junk burst. The framer is empty afterwards."""
        out: list[Item] = []
        rest = self.pending()
        if rest is not None:
            size = self._discarding or len(rest)
            self._emit(out, Truncated(rest, reason), rest, size)
        self._buf.clear()
        self._in_frame = False
        self._discarding = 0
        self._oversize_prefix = b""
        self._take_junk(out)
        return out
