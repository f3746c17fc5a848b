"""Cost of the HL7 checks before the ACK, per message: ``python bench/hl7_checks.py``.

Prints, per fixture message, the microseconds of ``peek`` (decode + MSH), ``check_structure``
(the per-structure segment scan) and the whole ``prepare_hl7`` (peek, source, decision, ACK,
record) — the work the listener does on the event loop before a frame is handed to storage.
Best of 5 repeats of CPU time (``time.process_time``: other processes on a shared machine do
not count); compare figures from one run.
"""
from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from middleware.config.sources import Source, Sources  # noqa: E402
from middleware.listeners.hl7_ingest import prepare_hl7  # noqa: E402
from middleware.normalize.hl7_peek import peek  # noqa: E402
from middleware.normalize.hl7_structure import check_structure  # noqa: E402

FIXTURES = ("siu_s12_v251.hl7", "siu_s12_v23.hl7", "adt_a01_v251.hl7", "adt_a03_v23.hl7", "adt_a40_v251.hl7")


def best_us(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5, timer=time.process_time)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    source, sources = Source(name="default"), Sources([])
    print(f"{'message':<20} {'peek':>8} {'checks':>8} {'prepare_hl7':>12}  (µs per message)")
    for name in FIXTURES:
        raw = (REPO / "tests" / "fixtures" / "hl7" / name).read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        p = peek(raw)
        t_peek = best_us(lambda: peek(raw), 5000)
        t_check = best_us(lambda: check_structure(p, source), 5000)
        t_prep = best_us(lambda: prepare_hl7(raw, channel="bench", port=None, sources=sources), 2000)
        print(f"{name:<20} {t_peek:>8.1f} {t_check:>8.1f} {t_prep:>12.1f}")


if __name__ == "__main__":
    main()
