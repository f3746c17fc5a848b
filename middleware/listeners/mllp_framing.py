"""MLLP framing (pure): ``0x0B`` payload ``0x1C 0x0D``.

Tolerates junk or NULs before the start block, a trailing LF after the end block,
frames split across reads and several frames in one read. A frame larger than the
limit is reported as :class:`Oversize` (with its first bytes, so it can be stored and
answered); a start block inside an unfinished frame reports the unfinished one as
:class:`Truncated`. A frame holding an HL7 batch (it starts with FHS or BHS) has its own
limit, ``max_batch_size`` (``Settings.hl7_max_batch_bytes``).
"""
from __future__ import annotations

from dataclasses import dataclass

SB = b"\x0b"
EB = b"\x1c"
CR = b"\x0d"


@dataclass(frozen=True)
class Oversize:
    prefix: bytes
    size: int


@dataclass(frozen=True)
class Truncated:
    data: bytes
    reason: str


Item = bytes | Oversize | Truncated

#: the batch limit when the framer is not given one (``Settings.hl7_max_batch_bytes``; set at startup)
DEFAULT_MAX_BATCH_BYTES = 16_777_216
_BATCH_HEADS = (b"FHS", b"BHS", b"\xef\xbb\xbfFHS", b"\xef\xbb\xbfBHS")


def frame(payload: bytes) -> bytes:
    """Wrap one message for the wire."""
    return SB + payload + EB + CR


class MllpFramer:
    """Feed received bytes; get complete frames (payload bytes) or framing problems."""

    def __init__(self, max_size: int = 1_048_576, max_batch_size: int | None = None) -> None:
        self.max_size = max_size
        self.max_batch_size = max(max_size, DEFAULT_MAX_BATCH_BYTES if max_batch_size is None else max_batch_size)
        self._buf = bytearray()
        self._in_frame = False
        self._discarding = 0  # bytes of an oversize frame skipped so far
        self._oversize_prefix = b""

    def feed(self, data: bytes) -> list[Item]:
        out: list[Item] = []
        self._buf += data
        while True:
            if not self._in_frame:
                i = self._buf.find(SB)
                if i < 0:
                    self._buf.clear()  # junk, NULs, stray LF/CR between frames
                    return out
                del self._buf[: i + 1]
                self._in_frame = True
                self._discarding = 0
            if self._discarding:
                j = self._buf.find(EB)
                if j < 0:
                    self._discarding += len(self._buf)
                    self._buf.clear()
                    return out
                self._discarding += j
                out.append(Oversize(self._oversize_prefix, self._discarding))
                del self._buf[: j + 1]
                self._in_frame = False
                self._discarding = 0
                continue
            j = self._buf.find(EB)
            k = self._buf.find(SB)
            if 0 <= k and (j < 0 or k < j):
                out.append(Truncated(bytes(self._buf[:k]), "a new start block arrived before the end block"))
                del self._buf[:k]
                self._in_frame = False
                continue
            if j < 0:
                if len(self._buf) > self._limit():
                    self._oversize_prefix = bytes(self._buf[: min(len(self._buf), 65536)])
                    self._discarding = len(self._buf)
                    self._buf.clear()
                return out
            if j > self._limit():
                out.append(Oversize(bytes(self._buf[:65536]), j))
            else:
                out.append(bytes(self._buf[:j]))
            # consume EB and an optional CR (a missing CR is tolerated)
            end = j + 1
            if end < len(self._buf) and self._buf[end : end + 1] == CR:
                end += 1
            del self._buf[:end]
            self._in_frame = False

    def _limit(self) -> int:
        """The size limit of the frame being read: the batch limit when it starts like a batch."""
        if self.max_batch_size > self.max_size and bytes(self._buf[:16]).lstrip(b"\r\n\x00 \t").startswith(_BATCH_HEADS):
            return self.max_batch_size
        return self.max_size

    def pending(self) -> bytes | None:
        """Bytes of an unfinished frame (at connection close)."""
        if self._in_frame and (self._buf or self._discarding):
            return bytes(self._buf) if not self._discarding else self._oversize_prefix
        return None
