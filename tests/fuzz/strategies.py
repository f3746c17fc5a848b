"""Hypothesis strategies for HL7 v2 inputs: arbitrary bytes, and messages built from the
synthetic fixtures and the hostile corpus, then mutated (bytes, delimiters, encodings)."""
from __future__ import annotations

import codecs
from pathlib import Path

from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SEEDS: list[bytes] = [
    p.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    for p in sorted((FIXTURES / "hl7").glob("*.hl7")) + sorted((FIXTURES / "hostile").glob("*.hl7"))
]
SEEDS = [s for s in SEEDS if len(s) < 20_000]
DELIMS = b"|^~\\&#\r\n\x00 "
TOKENS = [b"MSH", b"PID", b"PV1", b"SCH", b"EVN", b"RGS", b"MRG", b"AIS", b"TQ1", b"BHS", b"BTS", b"FHS", b"FTS",
          b"\\X0D\\", b"\\X\\", b"\\E\\", b"99999999999999999999", b"nan", b"1e999", b"-0", b"99991231235959-1200",
          b"00010101", b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3", b"~~~~", b"^^^^", b"&&&", b"2.7", b"2.3", b"ADT^A01",
          b"SIU^S12", b"ADT^A40", b"|AL|NE", b"UNICODE UTF-8", b"8859/1"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed message with up to six mutations."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 6))
        at = draw(st.integers(0, max(0, len(data))))
        if kind == 0:  # flip a byte
            if data:
                data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif kind == 1:  # insert a delimiter
            data[at:at] = bytes([draw(st.sampled_from(list(DELIMS)))])
        elif kind == 2:  # insert a token
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == 3:  # delete a range
            data[at:at + draw(st.integers(1, 40))] = b""
        elif kind == 4:  # duplicate or drop a segment
            segs = bytes(data).split(b"\r")
            i = draw(st.integers(0, max(0, len(segs) - 1)))
            if draw(st.booleans()):
                segs.insert(i, segs[i])
            elif len(segs) > 1:
                del segs[i]
            data = bytearray(b"\r".join(segs))
        elif kind == 5:  # arbitrary bytes
            data[at:at] = draw(st.binary(max_size=24))
        else:  # truncate
            del data[at:]
    out = bytes(data)
    enc = draw(st.sampled_from(["", "", "", "utf-16-le", "utf-16-be-bom", "utf-32-le", "bom8"]))
    if enc and out.isascii():
        text = out.decode("ascii")
        out = {"utf-16-le": codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
               "utf-16-be-bom": codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
               "utf-32-le": codecs.BOM_UTF32_LE + text.encode("utf-32-le"),
               "bom8": codecs.BOM_UTF8 + out}[enc]
    return out


def hl7_inputs() -> st.SearchStrategy[bytes]:
    """Mutated messages mostly, arbitrary bytes sometimes."""
    return st.one_of(mutated(), mutated(), mutated(), st.binary(max_size=600))


def mllp_payloads() -> st.SearchStrategy[bytes]:
    """What can travel inside one MLLP frame (no start or end block byte)."""
    return hl7_inputs().map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
