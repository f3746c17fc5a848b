"""The hostile-input corpus (tests/fixtures/hostile) and the invariants every answer must keep."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from middleware.config.sources import Source
from middleware.normalize.hl7_batch import is_batch
from middleware.normalize.hl7_peek import decode, peek, valid_field_sep
from middleware.normalize.hl7v2 import normalize_hl7

HOSTILE = Path(__file__).resolve().parents[1] / "fixtures" / "hostile"


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    code: str | None  # AA/AE/CE..., "batch", or None (not pinned)
    msa2: str | None


def corpus() -> list[Case]:
    expect = json.loads((HOSTILE / "expect.json").read_text(encoding="utf-8"))
    return [Case(n, (HOSTILE / f"{n}.hl7").read_bytes(), e.get("code"), e.get("msa2")) for n, e in sorted(expect.items())]


def ack_text(ack: bytes, codec: str | None = None) -> str:
    """An ACK in the codec its message used (``codec``), else as :func:`decode` reads it."""
    if codec:
        try:
            return ack.decode(codec)
        except UnicodeDecodeError:
            pass
    return decode(ack)[0]


def msa(ack: bytes, codec: str | None = None) -> list[str]:
    text = ack_text(ack, codec)
    seg = next(s for s in text.split("\r") if s.startswith("MSA"))
    return seg.split(seg[3])


def readable_msh10(raw: bytes) -> str | None:
    """MSH-10 as an independent oracle reads it: the first "MSH" in the decoded text whose
    next character is a usable field separator, its tenth field; ``None`` if unreadable."""
    text = decode(raw)[0]
    at = text.find("MSH")
    while at >= 0:
        line = text[at:].split("\r", 1)[0]
        sep = line[3:4]
        if valid_field_sep(sep) and sep not in "^~\\&":
            f = line.split(sep)
            return f[9] if len(f) > 9 else None
        at = text.find("MSH", at + 3)
    return None


def check_single_answer(raw: bytes, ack: bytes) -> list[str]:
    """Invariants of the ACK to one message; returns the MSA fields."""
    assert b"\x0b" not in ack and b"\x1c" not in ack, "an ACK must not contain MLLP block bytes"
    fields = msa(ack, peek(raw).codec)
    assert fields[1] in ("AA", "AE", "AR", "CA", "CE", "CR"), fields
    want = readable_msh10(raw)
    if want is not None and want.isprintable() and len(want) < 199:
        assert fields[2] == want, (fields[2], want)
    return fields


def check_batch_answer(raw: bytes, response: bytes) -> list[list[str]]:
    """Invariants of a response batch: BHS per received BHS with BHS-12 = received BHS-11."""
    assert is_batch(raw)
    text = response.decode("utf-8", "replace")
    segs = [s.split("|") for s in text.split("\r") if s]
    assert segs and segs[0][0] in ("FHS", "BHS"), segs[:1]
    return segs


def normalizes_without_error(raw: bytes) -> None:
    """What was answered AA and stored ``received`` must normalize (no failure after AA)."""
    normalize_hl7(decode(raw)[0], Source(name="default"))
