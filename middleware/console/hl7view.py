"""Raw HL7 v2 shown segment by segment, each field with its name on hover (``PID-5 Patient
Name``), the names read from hl7apy's v2.5 structure definitions (the version careloop's
normalizer reads; older messages use the same positions for the fields they have).

Masking happens before this (``mask.mask_hl7``): the view only splits what it is given."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Field:
    label: str  # "PID-5"
    name: str  # "Patient Name" ("" when the structure does not know the position)
    value: str


@dataclass(frozen=True)
class SegmentView:
    name: str
    fields: tuple[Field, ...]
    sep: str


@lru_cache(maxsize=2048)
def field_name(segment: str, position: int) -> str:
    """``field_name("PID", 5)`` -> ``"Patient Name"``; "" when unknown."""
    try:
        from hl7apy import load_library

        ref = load_library("2.5").FIELDS.get(f"{segment}_{position}")
    except Exception:  # an unknown segment or a library without it: no name, the value still shows
        return ""
    if not ref or len(ref) < 4 or not isinstance(ref[3], str):
        return ""
    return ref[3].replace("_", " ").title().replace(" S ", "'s ").replace(" Pid", " (PID)")


def segments(text: str) -> list[SegmentView]:
    """``text`` (segments separated by CR, LF or CRLF) as segment views; MSH-1 is the field separator."""
    sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    out = []
    for line in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if not line.strip():
            continue
        name = line[:3]
        parts = line.split(sep)
        first = 2 if name in ("MSH", "FHS", "BHS") else 1  # the separator itself is field 1
        fields = tuple(Field(f"{name}-{i}", field_name(name, i), value) for i, value in enumerate(parts[1:], first))
        out.append(SegmentView(name, fields, sep))
    return out
