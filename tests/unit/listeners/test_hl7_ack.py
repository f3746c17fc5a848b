from datetime import datetime, timezone

from middleware.listeners.hl7_ack import build_ack, wants_ack
from middleware.normalize.hl7_peek import Hl7Problem, peek

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def segs(text: str) -> dict[str, list[str]]:
    return {s[:3]: s.split("|") for s in text.split("\r") if s}


def test_aa_echoes_control_id_and_swaps_sender_receiver_v251():
    p = peek(b"MSH|^~\\&|EPIC|HOSP|CARELOOP|CL|20240501120000||SIU^S12^SIU_S12|MSG001|P|2.5.1\rSCH|1\rPID|1\r")
    ack = segs(build_ack(p, "accept", now=NOW))
    assert ack["MSH"][2:6] == ["CARELOOP", "CL", "EPIC", "HOSP"]
    assert ack["MSH"][8] == "ACK^S12^ACK"
    assert ack["MSH"][11] == "2.5.1"
    assert ack["MSA"][1:3] == ["AA", "MSG001"]
    assert "ERR" not in ack


def test_ae_has_err_in_v25_form():
    p = peek(b"MSH|^~\\&|EPIC|HOSP|||20240501||ADT^A01|C9|P|2.5.1\rPID|1\r")
    ack = segs(build_ack(p, "error", [Hl7Problem("101", "PID-3 missing", "PID", 1, 3)], now=NOW))
    assert ack["MSA"][1:3] == ["AE", "C9"]
    err = ack["ERR"]
    assert err[2] == "PID^1^3"  # ERR-2 error location
    assert err[3] == "101^Required field missing^HL70357"  # ERR-3 HL7 error code
    assert err[4] == "E"  # ERR-4 severity
    assert err[8] == "PID-3 missing"  # ERR-8 user message


def test_ar_has_err_in_v23_form_with_msa3():
    p = peek(b"MSH|^~\\&|EPIC|HOSP|||20240501||ADT^A01|C9|P|2.3\rPID|1\r")
    text = build_ack(p, "reject", [Hl7Problem("203", "HL7 version '2.3' is not accepted", "MSH", 1, 12)], now=NOW)
    ack = segs(text)
    assert ack["MSH"][8] == "ACK^A01"  # no structure component before 2.3.1
    assert ack["MSA"][1] == "AR"
    assert ack["MSA"][3].startswith("HL7 version")
    assert ack["ERR"][1] == "MSH^1^12^203&Unsupported version id&HL70357"  # ERR-1 ELD


def test_enhanced_mode_commit_ack_and_ack_conditions():
    p = peek(b"MSH|^~\\&|A|B|||20240501||ADT^A01|C1|P|2.5.1|||AL|NE\rPID|1\r")
    assert p.enhanced
    assert segs(build_ack(p, "accept", now=NOW))["MSA"][1] == "CA"
    assert wants_ack(p, "accept")
    er = peek(b"MSH|^~\\&|A|B|||20240501||ADT^A01|C1|P|2.5.1|||ER|NE\rPID|1\r")
    assert not wants_ack(er, "accept") and wants_ack(er, "error")


def test_custom_delimiters_and_escaping():
    p = peek(b"MSH#$~\\&#APP#FAC###20240501##ADT$A01#C|1#P#2.5.1\rPID#1\r")
    text = build_ack(p, "accept", now=NOW)
    assert text.startswith("MSH#$~\\&#")
    assert "MSA#AA#C|1" in text


def test_no_msh_still_answers():
    p = peek(b"PID|1||X\r")
    assert p.problems and p.problems[0].code == "100"
    text = build_ack(p, "error", p.problems, now=NOW)
    assert "MSA|AE|" in text and "ERR|" in text
