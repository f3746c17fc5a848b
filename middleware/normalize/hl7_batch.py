"""HL7 v2 batches and files (chapter 2, 2.10.3): split ``[FHS] {BHS {MSH...} BTS} [FTS]`` (pure).

A batch is recognised by its first segment (FHS or BHS, after an optional UTF-8 BOM).
Splitting works on the bytes, so each message keeps its original bytes (segment
terminators included); a batch must therefore be in an ASCII-compatible character set
(UTF-8, ISO 8859, Windows code pages), as the MSH-18 values of its messages say.
Messages directly inside an FHS without a BHS form one implied batch.

Counts are checked, not trusted: a BTS-1 (FTS-1) that differs from the messages
(batches) received is reported in :attr:`Hl7Batch.problems` and in the response's
BTS-2 (FTS-2). Segments outside any message (other than the four envelope segments)
are reported too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(rb"[^\r\n]+")
_ENVELOPE = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})
_BOM = b"\xef\xbb\xbf"


@dataclass
class BatchPart:
    """One ``BHS ... BTS`` (or the messages of an FHS without a BHS)."""

    header: list[str] | None = None  # BHS fields as sent: header[i] is BHS-i (header[1] the separator)
    messages: list[bytes] = field(default_factory=list)
    count: str | None = None  # BTS-1 as sent; None without a BTS


@dataclass
class Hl7Batch:
    file_header: list[str] | None  # FHS fields as sent (same indexing as BatchPart.header)
    parts: list[BatchPart]
    file_count: str | None  # FTS-1 as sent
    field_sep: str
    problems: list[str] = field(default_factory=list)

    @property
    def message_count(self) -> int:
        return sum(len(p.messages) for p in self.parts)

    def control_id(self) -> str:
        """The batch's own control id: BHS-11 of the first batch, else FHS-11."""
        for hdr in ([p.header for p in self.parts if p.header] + [self.file_header]):
            if hdr is not None and len(hdr) > 11 and hdr[11]:
                return hdr[11]
        return ""


def is_batch(raw: bytes) -> bool:
    """True when ``raw`` starts (after a UTF-8 BOM and blank bytes) with FHS or BHS."""
    head = raw[:64]
    if head.startswith(_BOM):
        head = head[3:]
    head = head.lstrip(b"\r\n\x00 \t")
    return head[:3] in (b"FHS", b"BHS") and len(head) > 3


def _fields(line: bytes) -> list[str]:
    text = line.decode("latin-1")
    sep = text[3:4] or "|"
    if sep.isalnum() or sep.isspace():
        return [text[:3]]
    out = text.split(sep)
    return out[:1] + [sep] + out[1:]  # index i is field i (FHS-1/BHS-1 is the separator)


def split_batch(raw: bytes) -> Hl7Batch:
    """Split a batch or file into its messages (each the original bytes). Never raises."""
    start = 3 if raw.startswith(_BOM) else 0
    file_header: list[str] | None = None
    file_count: str | None = None
    parts: list[BatchPart] = []
    problems: list[str] = []
    current: BatchPart | None = None
    msg_start: int | None = None
    sep = "|"
    stray = 0

    def close_message(end: int) -> None:
        nonlocal msg_start
        if msg_start is not None:
            assert current is not None
            current.messages.append(raw[msg_start:end])
            msg_start = None

    for m in _LINE.finditer(raw, start):
        line = m.group()
        sid = line[:3].lstrip(b"\x00")
        if sid == b"MSH":
            close_message(m.start())
            if current is None:
                current = BatchPart()
                parts.append(current)
            msg_start = m.start()
        elif sid in _ENVELOPE:
            close_message(m.start())
            f = _fields(line)
            if sid == b"FHS":
                file_header = f
                sep = f[1] if len(f) > 1 else sep
            elif sid == b"BHS":
                current = BatchPart(header=f)
                parts.append(current)
                sep = f[1] if len(f) > 1 else sep
            elif sid == b"BTS":
                if current is None:
                    current = BatchPart()
                    parts.append(current)
                current.count = f[2] if len(f) > 2 else ""
                current = None
            else:
                file_count = f[2] if len(f) > 2 else ""
        elif msg_start is None and line.strip(b"\x00 \t\x1a"):
            stray += 1
    close_message(len(raw))
    if stray:
        problems.append(f"{stray} segment(s) outside any message were not processed")
    for n, part in enumerate(parts, start=1):
        if part.count is not None and part.count.strip() != str(len(part.messages)):
            problems.append(f"batch {n}: BTS-1 says {part.count.strip()[:20] or 'nothing'}, {len(part.messages)} message(s) received")
        elif part.count is None and part.header is not None:
            problems.append(f"batch {n}: no BTS segment")
    if file_count is not None and file_count.strip() != str(len(parts)):
        problems.append(f"FTS-1 says {file_count.strip()[:20] or 'nothing'}, {len(parts)} batch(es) received")
    return Hl7Batch(file_header, parts, file_count, sep, problems)
