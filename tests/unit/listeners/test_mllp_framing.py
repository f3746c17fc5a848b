import random

from middleware.listeners.mllp_framing import Junk, MllpFramer, Oversize, Truncated, frame, looks_like_hl7

MSG = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5.1\rPID|1||X\r"


def test_frame_split_across_reads_byte_by_byte():
    f = MllpFramer()
    data = frame(MSG)
    out = []
    for i in range(len(data)):
        out += f.feed(data[i : i + 1])
    assert out == [MSG]


def test_several_frames_in_one_read_and_trailing_lf():
    f = MllpFramer()
    data = frame(MSG) + b"\n" + frame(MSG.replace(b"|1|", b"|2|")) + b"\r\n"
    out = f.feed(data)
    assert out == [MSG, MSG.replace(b"|1|", b"|2|")]
    assert f.pending() is None


def test_junk_before_start_block_is_one_record_then_the_frame():
    f = MllpFramer()
    assert f.feed(b"\x00\x00garbage\r\n" + frame(MSG)) == [Junk(b"\x00\x00garbage\r\n", 11), MSG]


def test_nuls_and_line_ends_between_frames_are_not_junk():
    f = MllpFramer()
    assert f.feed(b"\x00\x00\r\n" + frame(MSG) + b"\x1c\r\n\x00" + frame(MSG)) == [MSG, MSG]
    assert f.finish("closed") == [] and not f.busy()


def test_random_bytes_are_junk_bursts_each_ended_by_a_complete_frame_and_no_byte_is_lost():
    data = random.Random(7).randbytes(1_000_000)
    assert data.count(b"\x0b") > 3000  # thousands of stray start blocks
    f = MllpFramer(junk_keep=2_000_000)
    out = []
    for i in range(0, len(data), 1000):
        out += f.feed(data[i:i + 1000])
    out += f.feed(frame(MSG))  # a real frame ends the last burst
    assert out[-1] == MSG
    bursts = out[:-1]
    assert bursts and all(isinstance(j, Junk) and j.dropped == 0 for j in bursts)
    assert b"".join(j.data for j in bursts) == data  # every byte, in order, once
    # each burst but the last ends with a complete non-HL7 frame (to be answered); one per frame
    assert all(j.frame and j.data.endswith((b"\x1c", b"\x1c\r")) for j in bursts[:-1])
    assert sum(j.frame for j in bursts) == f.junk_frames > 100


def test_junk_burst_keeps_its_first_bytes_and_counts_the_rest():
    data = b"\x01" * 10_000  # no frame at all: one burst
    f = MllpFramer(junk_keep=4096)
    assert f.feed(data) == []
    (junk,) = f.feed(frame(MSG))[:1]
    assert junk == Junk(data[:4096], 10_000) and junk.dropped == 10_000 - 4096


def test_bytes_outside_frames_join_a_complete_non_hl7_frame_which_ends_the_burst():
    f = MllpFramer()
    assert f.feed(b"\x0bGET / HTTP/1.1\r\n\x1c\r\x0b\x16\x03\x01") == [
        Junk(b"\x0bGET / HTTP/1.1\r\n\x1c\r", 19, frame=True)]
    assert f.busy()
    (junk,) = f.finish("closed")
    assert junk == Junk(b"\x0b\x16\x03\x01", 4)  # unfinished: not a complete frame, no answer
    f2 = MllpFramer()
    assert f2.feed(b"noise" + frame(b"") + frame(MSG)) == [Junk(b"noise\x0b\x1c\r", 8, frame=True), MSG]


def test_an_oversize_non_hl7_frame_is_a_complete_junk_frame():
    f = MllpFramer(max_size=100, junk_keep=65536)
    (junk,) = f.feed(b"\x0b" + b"z" * 1000 + b"\x1c\r")
    assert junk.frame and junk.size == 1003 and not f.busy()


def test_after_max_junk_frames_the_framer_gives_up_and_keeps_the_rest_as_one_burst():
    f = MllpFramer(max_junk_frames=3)
    rest = frame(MSG) + b"\x0bxyz\x1c\r" + b"more"
    out = f.feed(frame(b"a") + b"x" + frame(b"b") + frame(b"c") + rest)
    assert [j.frame for j in out] == [True, True, True] and f.gave_up
    assert out[1] == Junk(b"x\x0bb\x1c\r", 5, frame=True)
    assert f.feed(b"later") == []
    (last,) = f.finish("closed")
    assert last == Junk(rest + b"later", len(rest) + 5)  # unchanged, nothing framed, no answer


def test_hl7_in_utf16_or_after_a_bom_is_not_junk():
    assert looks_like_hl7(b"\xff\xfe\rMSH|x\r")
    assert looks_like_hl7("MSH|^~\\&|A".encode("utf-16"))
    assert looks_like_hl7(b"FHS|^~\\&|") and looks_like_hl7(b"BHS|^~\\&|")
    assert not looks_like_hl7(b"\x16\x03\x01\x02\x00")
    f = MllpFramer()
    assert f.feed(frame(b"\xff\xfe\rMSH|x\r")) == [b"\xff\xfe\rMSH|x\r"]


def test_unfinished_hl7_frame_at_finish_is_truncated():
    f = MllpFramer()
    assert f.feed(b"\x0b" + MSG[:30]) == []
    (t,) = f.finish("connection closed")
    assert t == Truncated(MSG[:30], "connection closed")


def test_missing_cr_after_end_block_is_tolerated():
    f = MllpFramer()
    assert f.feed(b"\x0b" + MSG + b"\x1c" + b"\x0b" + MSG + b"\x1c\r") == [MSG, MSG]


def test_oversize_frame_reported_with_prefix_and_stream_recovers():
    f = MllpFramer(max_size=100)
    big = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|9|P|2.5.1\r" + b"NTE|" + b"x" * 500 + b"\r"
    out = f.feed(frame(big)[:50])
    out += f.feed(frame(big)[50:] + frame(MSG))
    assert isinstance(out[0], Oversize)
    assert out[0].prefix.startswith(b"MSH|")
    assert out[0].size > 100
    assert out[1] == MSG


def test_truncated_frame_when_new_start_block_arrives():
    f = MllpFramer()
    out = f.feed(b"\x0b" + MSG[:20] + frame(MSG))
    assert isinstance(out[0], Truncated)
    assert out[0].data == MSG[:20]
    assert out[1] == MSG


def test_pending_reports_unfinished_frame_at_close():
    f = MllpFramer()
    assert f.feed(b"\x0b" + MSG[:30]) == []
    assert f.pending() == MSG[:30]


def test_a_frame_holding_a_batch_has_the_batch_limit():
    from middleware.listeners.mllp_framing import MllpFramer, Oversize, frame

    batch = b"BHS|^~\\&|A|B\r" + b"MSH|^~\\&|A|B|||x||ADT^A01|1|P|2.5\r" * 40 + b"BTS|40\r"
    single = b"MSH|^~\\&|A|B|||x||ADT^A01|1|P|2.5\r" + b"Z" * len(batch)
    f = MllpFramer(max_size=1000, max_batch_size=100_000)
    assert f.feed(frame(batch)[:700]) == [] and f.feed(frame(batch)[700:]) == [batch]
    out = f.feed(frame(single))
    assert len(out) == 1 and isinstance(out[0], Oversize)
    small = MllpFramer(max_size=1000, max_batch_size=1200)
    assert isinstance(small.feed(frame(batch))[0], Oversize)
