"""peek never raises, reads MSH-10 whenever it can, and checks MSH-2 by HL7 v2 chapter 2."""
from __future__ import annotations

import codecs

import pytest

from middleware.config.sources import Sources
from middleware.listeners.hl7_ingest import prepare_hl7
from middleware.normalize.hl7_peek import decode, peek

OK_V25 = b"MSH|^~\\&|APP|FAC|CL|CL|20240501120000||ADT^A01^ADT_A01|CTRL-9|P|2.5.1\rEVN|A01|20240501120000\rPID|1||M1^^^H^MR\rPV1|1|I\r"


def fields(ack: bytes, sid: str) -> list[str]:
    seg = next(s for s in ack.decode("utf-8").split("\r") if s.startswith(sid))
    return seg.split(seg[3])


def prepare(raw: bytes):  # type: ignore[no-untyped-def]
    return prepare_hl7(raw, channel="test", port=None, sources=Sources([]))


def test_utf16_bom_with_odd_length_does_not_raise_and_is_answered_ae_with_err():
    raw = b"\xff\xfe\rMSH|x\r"  # issue 11, "What was seen" 1
    p = peek(raw)  # raised UnicodeDecodeError before
    assert p.problems and p.problems[0].severity == "E" and p.problems[0].code == "102"
    prep = prepare(raw)
    assert prep.kind == "error" and prep.record.status == "failed"
    assert prep.record.raw == raw  # stored unchanged
    assert fields(prep.ack, "MSA")[1] == "AE"
    assert fields(prep.ack, "ERR")[3].startswith("102^")


def test_decode_never_raises_for_bom_variants():
    for raw in (b"\xff\xfe\x00\x00M", b"\x00\x00\xfe\xff\x00", b"\xfe\xffM", b"\xef\xbb\xbf\xff", b"M\x00S\x00H\x00|"):
        text, _codec, _problems = decode(raw)
        assert isinstance(text, str)


def test_utf16_message_with_bom_is_decoded_and_answered_in_utf16():
    raw = codecs.BOM_UTF16_LE + OK_V25.decode().encode("utf-16-le")
    p = peek(raw)
    assert p.ok and p.control_id == "CTRL-9" and p.codec == "utf-16-le"
    prep = prepare(raw)
    assert prep.kind == "accept"
    assert "MSA|AA|CTRL-9" in prep.ack.decode("utf-16-le")


def test_enhanced_mode_poison_frame_gets_ce():
    raw = b"MSH|^~\\&|A|B|||20240501||ADT^A01|C-77|P|2.5.1|||AL|NE\r\xff\xfe"
    prep = prepare(b"\xff\xfe" + raw[:-2] + b"x")  # odd UTF-16 length, MSH-15 readable only by salvage
    assert fields(prep.ack, "MSA")[1:3] == ["CE", "C-77"]


def test_five_char_msh2_with_duplicate_gets_ae_with_msa2_filled():
    raw = OK_V25.replace(b"^~\\&", b"^~\\\\&")  # issue 11, "What was seen" 3: empty MSA-2 before
    prep = prepare(raw)
    assert prep.kind == "error"
    assert fields(prep.ack, "MSA")[1:3] == ["AE", "CTRL-9"]
    assert fields(prep.ack, "ERR")[2] == "MSH^1^2"


@pytest.mark.parametrize("msh2", [b"^~", b"^^\\&", b"^~A&", b"^~ &", b"^~\\&#$"])
def test_invalid_msh2_is_refused_with_msa2(msh2: bytes):
    prep = prepare(OK_V25.replace(b"^~\\&", msh2, 1))
    assert prep.kind == "error" and fields(prep.ack, "MSA")[2] == "CTRL-9"


def test_truncation_character_accepted_from_v27_and_warned_before():
    v27 = OK_V25.replace(b"^~\\&", b"^~\\&#").replace(b"|2.5.1", b"|2.7")
    p = peek(v27)
    assert p.ok and p.encoding_chars == "^~\\&#"
    assert prepare(v27).kind == "accept"
    p25 = peek(OK_V25.replace(b"^~\\&", b"^~\\&#"))
    assert [x.severity for x in p25.problems] == ["W"]
    prep = prepare(OK_V25.replace(b"^~\\&", b"^~\\&#"))
    assert prep.kind == "accept" and fields(prep.ack, "ERR")[4] == "W"


def test_other_distinct_delimiters_are_accepted():
    p = peek(b"MSH#$~\\&#APP#FAC###20240501##ADT$A01#C|1#P#2.5.1\rPID#1\r")
    assert p.ok and p.control_id == "C|1"


@pytest.mark.parametrize("raw", [
    b"", b"\x00\x00", b"\r\n", b"MSH", b"MSH|", b"MSHA^~\\&", b"junk\rMSH|^~\\&|A|B|||x||ADT^A01|J-1|P|2.5\r",
    b"MSH|^~\\&|" + b"|" * 100000, b"MSH|^~\\&|A|B|||x||ADT^A01|" + b"~" * 50000 + b"|P|2.5\r",
    b"MSH|\xff\xfe\xfd\xfc|A|B|||x||ADT^A01|NA-1|P|2.5\r", b"\x0bMSH|^~\\&\x1c\r",
])
def test_hostile_bytes_never_raise_and_get_one_ack(raw: bytes):
    prep = prepare(raw)
    assert prep.ack.startswith(b"MSH|") and b"\rMSA|" in prep.ack
    assert b"\x1c" not in prep.ack and b"\x0b" not in prep.ack
    assert prep.record.raw == raw


def test_msh10_read_from_junk_prefixed_message():
    prep = prepare(b"junk\rMSH|^~\\&|A|B|||x||ADT^A01|J-1|P|2.5\r")
    assert prep.kind == "error" and fields(prep.ack, "MSA")[1:3] == ["AE", "J-1"]
