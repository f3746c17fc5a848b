"""HL7 v2 batches (chapter 2, 2.10.3): splitting by bytes and the response batch."""
from __future__ import annotations

from datetime import datetime, timezone

from middleware.config.sources import Hl7Settings, Source, Sources
from middleware.listeners.hl7_batch_ack import build_batch_response
from middleware.listeners.hl7_ingest import prepare_batch
from middleware.normalize.hl7_batch import is_batch, split_batch

M1 = b"MSH|^~\\&|LAB|H|CL|CL|20240501||ADT^A01^ADT_A01|B-1|P|2.5.1\rEVN|A01|20240501\rPID|1||M1^^^H^MR\rPV1|1|I\r"
M2 = b"MSH|^~\\&|LAB|H|CL|CL|20240501||ADT^A01^ADT_A01|B-2|P|2.5.1\nEVN|A01|20240501\nPID|1||M2^^^H^MR\n"  # no PV1, LF ends
BHS = b"BHS|^~\\&|LAB|H|CL|CL|20240501120000||||BATCH-42\r"
NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def segs(data: bytes) -> list[list[str]]:
    return [s.split("|") for s in data.decode().split("\r") if s]


def test_detects_batches_and_files():
    assert is_batch(BHS + M1 + b"BTS|1\r") and is_batch(b"\xef\xbb\xbfFHS|^~\\&\r") and is_batch(b"\r\nBHS|")
    assert not is_batch(M1) and not is_batch(b"BHS") and not is_batch(b"")


def test_split_keeps_each_message_bytes_and_checks_counts():
    b = split_batch(BHS + M1 + M2 + b"BTS|2\r")
    assert b.parts[0].messages == [M1, M2]  # the original bytes, LF line ends included
    assert b.parts[0].header is not None and b.parts[0].header[11] == "BATCH-42"  # BHS-11
    assert b.problems == []
    wrong = split_batch(BHS + M1 + M2 + b"BTS|3\r")
    assert wrong.problems == ["batch 1: BTS-1 says 3, 2 message(s) received"]


def test_file_with_two_batches_and_fts_count():
    data = b"FHS|^~\\&|LAB|H|||20240501||||FILE-1\r" + BHS + M1 + b"BTS|1\r" + BHS.replace(b"42", b"43") + M2 + b"BTS|1\rFTS|3\r"
    b = split_batch(data)
    assert [len(p.messages) for p in b.parts] == [1, 1]
    assert b.problems == ["FTS-1 says 3, 2 batch(es) received"]


def test_response_batch_references_the_received_batch_and_carries_every_ack():
    prep = prepare_batch(BHS + M1 + M2 + b"BTS|3\r", channel="t", port=None, sources=Sources([]))
    answers = [[(p.kind, p.ack) for p in part] for part in prep.parts]
    out = segs(build_batch_response(prep.batch, answers, now=NOW))
    bhs = out[0]
    assert bhs[0] == "BHS" and bhs[2:6] == ["CL", "CL", "LAB", "H"]  # sender and receiver swapped
    assert bhs[11] == "BATCH-42"  # BHS-12 reference batch control id = received BHS-11
    assert bhs[10].startswith("CLB")  # its own BHS-11
    assert [s[1:3] for s in out if s[0] == "MSA"] == [["AA", "B-1"], ["AE", "B-2"]]
    bts = out[-1]
    assert bts[0] == "BTS" and bts[1] == "2" and "BTS-1 says 3" in bts[2]


def test_negative_acks_only_per_source():
    src = Source(name="default", hl7=Hl7Settings(batch_acks="errors"))
    prep = prepare_batch(BHS + M1 + M2 + b"BTS|2\r", channel="t", port=None, sources=Sources([src]))
    answers = [[(p.kind, p.ack) for p in part] for part in prep.parts]
    out = segs(build_batch_response(prep.batch, answers, mode=prep.mode, now=NOW))
    assert [s[1:3] for s in out if s[0] == "MSA"] == [["AE", "B-2"]]
    assert out[-1][:2] == ["BTS", "1"]


def test_file_is_answered_with_a_file():
    data = b"FHS|^~\\&|LAB|H|||20240501||||FILE-1\r" + BHS + M1 + b"BTS|1\rFTS|1\r"
    prep = prepare_batch(data, channel="t", port=None, sources=Sources([]))
    out = segs(build_batch_response(prep.batch, [[(p.kind, p.ack) for p in part] for part in prep.parts], now=NOW))
    assert out[0][0] == "FHS" and out[0][11] == "FILE-1"
    assert out[-1] == ["FTS", "1"]


def test_batch_over_the_message_limit_is_refused_whole():
    prep = prepare_batch(BHS + M1 * 3 + b"BTS|3\r", channel="t", port=None, sources=Sources([]), max_messages=2)
    assert prep.refused is not None and prep.envelope.status == "failed"
    assert b"MSA|AE|BATCH-42" in prep.refused and b"3-message" not in prep.refused
    assert b"exceeds the 2-message batch limit" in prep.refused
