"""Property-based fuzzing (hypothesis, bounded) of the HL7 path before and after the ACK:
peek, the ACK builder, prepare_hl7 (the decision), batches and normalization.

Properties: no exception escapes; each input gets exactly one ACK whose MSA-2 equals MSH-10
whenever MSH-10 is readable; the record keeps the raw bytes; and a message answered AA and
stored ``received`` normalizes without error (never a failure after AA)."""
from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.config.sources import Hl7Settings, Source, Sources
from middleware.listeners.hl7_ack import build_ack
from middleware.listeners.hl7_batch_ack import build_batch_response
from middleware.listeners.hl7_ingest import prepare_batch, prepare_hl7
from middleware.normalize.hl7_batch import split_batch
from middleware.normalize.hl7_peek import Hl7Problem, Peek, decode, peek
from middleware.normalize.hl7v2 import Hl7ContentError, normalize_hl7
from tests.fuzz.strategies import hl7_inputs, mutated
from tests.support.hostile_hl7 import check_single_answer

SOURCES = Sources([])
STRICT = Sources([Source(name="default", hl7=Hl7Settings(structure="strict"))])


@settings(max_examples=1500)
@given(hl7_inputs())
def test_prepare_never_raises_answers_once_and_keeps_the_bytes(raw: bytes) -> None:
    prep = prepare_hl7(raw, channel="fuzz", port=None, sources=SOURCES)
    assert prep.record.raw == raw
    check_single_answer(raw, prep.ack)
    if prep.status == "received":  # answered AA: processing must not fail
        normalize_hl7(decode(raw)[0], Source(name="default"))


@settings(max_examples=400)
@given(mutated())
def test_strict_sources_never_fail_after_aa_either(raw: bytes) -> None:
    prep = prepare_hl7(raw, channel="fuzz", port=None, sources=STRICT)
    if prep.status == "received":
        normalize_hl7(decode(raw)[0], STRICT.by_name["default"])


@settings(max_examples=600)
@given(st.binary(max_size=400))
def test_peek_and_decode_never_raise_on_any_bytes(raw: bytes) -> None:
    p = peek(raw)
    assert isinstance(decode(raw)[0], str)
    if not p.problems:
        assert p.control_id and p.text is not None


_field = st.text(max_size=30)


@settings(max_examples=400)
@given(_field, _field, _field, st.sampled_from(["|", "#", "!"]), st.sampled_from(["^~\\&", "$~\\&", "^~\\&#", ""]),
       st.sampled_from(["", "2.3", "2.5.1", "2.7", "x.y", "99999999999"]), st.booleans(),
       st.sampled_from(["accept", "error", "reject"]), st.lists(_field, max_size=3))
def test_ack_builder_never_raises_and_echoes_the_control_id(app: str, ctl: str, mtype: str, sep: str, enc: str, version: str,
                                                            enhanced: bool, kind: str, texts: list[str]) -> None:
    ctl = "".join(c for c in ctl if c.isprintable() and c not in sep + "\r\n")
    p = Peek(field_sep=sep, encoding_chars=enc, sending_app=app, control_id=ctl, message_type=mtype,
             version=version, accept_ack_type="AL" if enhanced else "")
    text = build_ack(p, kind, [Hl7Problem("102", t, "PID", 1, 3, "E") for t in texts])
    segs = text.split("\r")
    assert segs[0].startswith("MSH" + sep) and segs[1].startswith("MSA" + sep)
    assert segs[1].split(sep)[2] == ctl
    assert "\x0b" not in text and "\x1c" not in text


_ENVELOPE_LINE = re.compile(rb"[\r\n]\x00*(MSH|BHS|BTS|FHS|FTS)")


def _batch_of(msgs: list[bytes], count: str) -> bytes:
    return b"BHS|^~\\&|F|H|||20240501||||B-1\r" + b"".join(msgs) + b"BTS|" + count.encode() + b"\r"


@settings(max_examples=150)
@given(st.lists(mutated(), max_size=5), st.sampled_from(["0", "1", "2", "5", "x", ""]), st.booleans())
def test_batches_split_answer_every_message_and_keep_bytes(msgs: list[bytes], count: str, noise: bool) -> None:
    msgs = [m if m.endswith((b"\r", b"\n")) else m + b"\r" for m in msgs if m.startswith(b"MSH")]
    msgs = [m for m in msgs if not _ENVELOPE_LINE.search(m[3:])]  # one MSH line each, no batch segment
    raw = _batch_of(msgs, count) + (b"\x00GARBAGE\r" if noise else b"")
    b = split_batch(raw)
    assert b.message_count == len(msgs)
    for part in b.parts:
        for m in part.messages:
            assert m in raw
    prep = prepare_batch(raw, channel="fuzz", port=None, sources=SOURCES)
    answers = [[(p.kind, p.ack) for p in part] for part in prep.parts]
    out = build_batch_response(prep.batch, answers)
    assert out.startswith(b"BHS|") and len(re.findall(rb"\rMSA[^\r]", out)) == b.message_count
    assert b"\x1c" not in out and b"\x0b" not in out


@settings(max_examples=200)
@given(st.binary(max_size=800))
def test_split_batch_never_raises(raw: bytes) -> None:
    split_batch(b"BHS|" + raw)
    split_batch(b"FHS|^~\\&\r" + raw)


@settings(max_examples=800)
@given(mutated())
def test_normalization_raises_only_content_errors(raw: bytes) -> None:
    text = decode(raw)[0]
    try:
        normalize_hl7(text, Source(name="default"))
    except Hl7ContentError:
        pass


@settings(max_examples=1500)
@given(st.text(alphabet="0123456789+-.:T Z٢", max_size=24))
def test_the_fast_timestamp_check_agrees_with_the_normalizer(value: str) -> None:
    from middleware.normalize.hl7_structure import ts_valid
    from middleware.normalize.hl7_types import ts_parts

    assert ts_valid(value) == (ts_parts(value) is not None)
