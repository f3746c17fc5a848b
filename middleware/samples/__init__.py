"""Synthetic HL7 v2 sample messages (package data) for the README demo journey.

Fake patients only (``TESTPATIENT^ALPHA``, MRNs ``MRN000xxx``, phones 555-01xx).
Files use CR segment separators and are named ``NN_<type>_<event>_<what>.hl7``
so sorting gives the demo order: a booking (APT1001), a no-show of an earlier visit
(APT1000), admit, discharge home, cancel. ``careloop send --samples`` re-dates them
relative to now (``samples/shift.py``).
"""
from __future__ import annotations

from pathlib import Path

_DIR = Path(__file__).resolve().parent / "hl7"


def sample_paths() -> list[Path]:
    """The sample ``.hl7`` files in demo order (sorted by name)."""
    return sorted(_DIR.glob("*.hl7"))
