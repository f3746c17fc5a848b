"""Coverage-guided fuzzing of the HL7 path with atheris (libFuzzer): ``make fuzz``.

Each input is one MLLP frame payload or /hl7v2 body. Checked per input: peek, the ACK and
prepare_hl7 never raise; the record keeps the bytes; the ACK holds no MLLP block byte and
echoes MSH-10 in MSA-2 whenever MSH-10 is readable; a message answered AA (stored
``received``) normalizes without error; normalization raises nothing but Hl7ContentError;
a batch is split and answered with one response batch. A violated check is a crash
(libFuzzer writes the input to the artifact prefix).

Usage: python tests/fuzz/atheris_hl7.py [libFuzzer flags] CORPUS_DIR [SEED_DIR...]
"""
from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["middleware", "hl7"]):
    from middleware.config.sources import Source, Sources
    from middleware.listeners.hl7_batch_ack import build_batch_response
    from middleware.listeners.hl7_ingest import prepare_batch, prepare_hl7
    from middleware.normalize.hl7_batch import is_batch
    from middleware.normalize.hl7_peek import decode
    from middleware.normalize.hl7v2 import Hl7ContentError, normalize_hl7

from tests.support.hostile_hl7 import check_single_answer  # noqa: E402

SOURCES = Sources([])
DEFAULT = Source(name="default")


def one_input(data: bytes) -> None:
    payload = data.replace(b"\x0b", b"").replace(b"\x1c", b"")  # what one MLLP frame can carry
    if is_batch(payload):
        prep = prepare_batch(payload, channel="fuzz", port=None, sources=SOURCES)
        answers = [[(p.kind, p.ack) for p in part] for part in prep.parts]
        out = prep.refused or build_batch_response(prep.batch, answers)
        assert b"\x1c" not in out and b"\x0b" not in out
        for part in prep.parts:
            for p in part:
                if p.status == "received":
                    normalize_hl7(decode(p.record.raw)[0], DEFAULT)
        return
    prep = prepare_hl7(payload, channel="fuzz", port=None, sources=SOURCES)
    assert prep.record.raw == payload
    check_single_answer(payload, prep.ack)
    text = decode(payload)[0]
    if prep.status == "received":
        normalize_hl7(text, DEFAULT)  # never a failure after AA
    else:
        try:
            normalize_hl7(text, DEFAULT)
        except Hl7ContentError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
