"""Masking identifiers for display: what the console shows until someone with ``reveal`` asks.

HL7 v2: every field of the segments that identify a person (PID, PD1, NK1, GT1, IN1, IN2, IN3, MRG,
and the PV1/PV2 patient-facing fields are not masked: they name places and clinicians) is replaced
by ``***`` while the segment's shape (its separators) stays visible, so an analyst still sees which
fields are present; PID-1 / NK1-1 / ... (set ids) are kept. FHIR: a Patient's (or RelatedPerson's,
Person's) name, birthDate, address, telecom, identifier, photo and contact, and every reference's
``display`` (which often carries the patient's name) become ``***``.

One masking for every page (messages, dead letters, playground, timeline), so they cannot differ.
"""
from __future__ import annotations

from typing import Any

MASK = "***"
#: Segments whose fields identify a person (patient, next of kin, guarantor, insured, merged patient).
HL7_SEGMENTS = frozenset({"PID", "PD1", "NK1", "GT1", "IN1", "IN2", "IN3", "MRG"})
#: Resource types whose identifying elements are masked.
PERSON_TYPES = frozenset({"Patient", "RelatedPerson", "Person"})
PERSON_ELEMENTS = ("name", "birthDate", "address", "telecom", "identifier", "photo", "contact")


def mask_segment(segment: str, field_sep: str = "|") -> str:
    """One HL7 segment with every field after the set id masked (empty fields stay empty)."""
    name = segment[:3]
    if name not in HL7_SEGMENTS:
        return segment
    parts = segment.split(field_sep)
    return field_sep.join([parts[0], *(p if i == 1 or p == "" else MASK for i, p in enumerate(parts[1:], 1))])


def mask_hl7(text: str) -> str:
    """A whole message (segments separated by CR, LF or CRLF) with identifying segments masked."""
    sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    return "\r".join(mask_segment(ln, sep) for ln in lines)


def mask_fhir(value: Any) -> Any:
    """A FHIR resource or Bundle (parsed JSON) with person identifiers and reference displays masked (a copy)."""
    if isinstance(value, list):
        return [mask_fhir(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    person = value.get("resourceType") in PERSON_TYPES
    for k, v in value.items():
        if person and k in PERSON_ELEMENTS:
            out[k] = MASK
        elif k == "display" and isinstance(v, str) and "reference" in value:
            out[k] = MASK
        else:
            out[k] = mask_fhir(v)
    return out
