"""Cheap, schema-less first look at an HL7v2 message: decoding and MSH fields.

This runs on the MLLP hot path before the ACK, so it only splits the MSH segment
and checks the structure (segment ids, required segments); full parsing happens
after the message is durably stored.

Decoding follows MSH-18 (HL7 table 0211) with the source's fallback codec; a UTF-8
BOM is stripped and CRLF / LF segment ends become CR. The original bytes are never
modified by this module.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

#: HL7 table 0211 (alternate character sets) -> Python codec
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "ISO IR6": "ascii",
    "ISO IR14": "shift_jis",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "ISO IR100": "latin-1",
    "ISO IR192": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "UTF-8": "utf-8",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}

_SEG_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")

#: required segments per message family, checked before the ACK
REQUIRED_SEGMENTS: dict[str, tuple[str, ...]] = {
    "SIU": ("SCH", "PID"),
    "ADT": ("PID",),
}


@dataclass
class Hl7Problem:
    """One error for an ERR segment: HL7 table 0357 code, text, location."""

    code: str  # e.g. "100", "101", "200"
    text: str
    segment: str = "MSH"
    sequence: int = 1
    field: int | None = None
    severity: str = "E"


@dataclass
class Peek:
    """What the listener needs before it answers."""

    text: str | None = None
    field_sep: str = "|"
    encoding_chars: str = "^~\\&"
    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    message_time: str = ""
    message_type: str = ""  # "SIU^S12" (code^trigger)
    structure: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    accept_ack_type: str = ""  # MSH-15
    app_ack_type: str = ""  # MSH-16
    charset: str = ""  # MSH-18 as sent
    codec: str = ""
    segments: list[str] = field(default_factory=list)
    problems: list[Hl7Problem] = field(default_factory=list)

    @property
    def enhanced(self) -> bool:
        return bool(self.accept_ack_type or self.app_ack_type)

    @property
    def ok(self) -> bool:
        return not self.problems


def _msh_fields_latin1(raw: bytes) -> list[str] | None:
    start = raw.find(b"MSH")
    if start < 0:
        return None
    end = len(raw)
    for term in (b"\r", b"\n"):
        i = raw.find(term, start)
        if 0 <= i < end:
            end = i
    line = raw[start:end].decode("latin-1")
    if len(line) < 8:
        return None
    sep = line[3]
    return line.split(sep)


def decode(raw: bytes, fallback: str = "cp1252") -> tuple[str, str, list[Hl7Problem]]:
    """Decode per MSH-18, else UTF-8, else the fallback; return (text, codec, problems)."""
    problems: list[Hl7Problem] = []
    data = raw
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _norm(data.decode("utf-16")), "utf-16", problems
    fields = _msh_fields_latin1(data)
    declared = ""
    if fields and len(fields) > 17:
        declared = fields[17].split(fields[1][1] if len(fields[1]) > 1 else "~")[0].strip()
    if declared:
        codec = CHARSETS.get(declared.upper())
        if codec is None:
            problems.append(
                Hl7Problem("103", f"MSH-18 character set '{declared}' is not in table 0211; used {fallback}", "MSH", 1, 18, "W")
            )
        else:
            try:
                return _norm(data.decode(codec)), codec, problems
            except UnicodeDecodeError:
                problems.append(
                    Hl7Problem("102", f"bytes are not valid {declared} as MSH-18 declares; used {fallback}", "MSH", 1, 18, "W")
                )
    else:
        try:
            return _norm(data.decode("utf-8")), "utf-8", problems
        except UnicodeDecodeError:
            pass
    try:
        return _norm(data.decode(fallback)), fallback, problems
    except UnicodeDecodeError:
        problems.append(Hl7Problem("102", f"message cannot be decoded with {fallback}", "MSH", 1, 18))
        return _norm(data.decode(fallback, errors="replace")), fallback, problems


def _norm(text: str) -> str:
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.strip("\r\x00 \t") + "\r"


_SEG_OK: dict[str, bool] = {}  # segment id -> matches _SEG_ID (memo; ids are few)
_DEFAULT_DELIMS = ("|", "^~\\&")


def _seg_ok(sid: str) -> bool:
    ok = _SEG_OK.get(sid)
    if ok is None:
        ok = _SEG_ID.match(sid) is not None
        if len(_SEG_OK) < 4096:
            _SEG_OK[sid] = ok
    return ok


def peek(raw: bytes, fallback: str = "cp1252") -> Peek:
    """Decode and read MSH; record structural problems (never raises)."""
    p = Peek()
    if not raw.strip(b"\r\n\x00 \t"):
        p.problems.append(Hl7Problem("100", "empty message", "MSH", 1))
        return p
    text, codec, problems = decode(raw, fallback)
    p.text, p.codec = text, codec
    if problems:
        p.problems.extend(problems)
    if not text.startswith("MSH"):
        p.problems.append(Hl7Problem("100", "message does not start with an MSH segment", "MSH", 1))
        return p
    segments = [s for s in text.split("\r") if s]
    p.segments = segments
    msh = segments[0]
    if len(msh) < 8:
        p.problems.append(Hl7Problem("101", "MSH segment is truncated", "MSH", 1, 2))
        return p
    sep = msh[3]
    p.field_sep = sep
    f = msh.split(sep)
    n = len(f)
    enc = f[1] if n > 1 else ""
    if (sep, enc) != _DEFAULT_DELIMS and (
        len(enc) not in (4, 5)
        or len(set(enc + sep)) != len(enc) + 1
        or any(c.isalnum() or c.isspace() for c in enc + sep)
    ):
        p.problems.append(
            Hl7Problem("102", f"MSH-2 encoding characters '{enc}' are invalid (expected four distinct delimiters such as ^~\\&)", "MSH", 1, 2)
        )
        return p
    p.encoding_chars = enc
    comp = enc[0]
    # MSH-i is f[i - 1]; the first component of a field is what precedes the first ``comp``
    p.sending_app = f[2].partition(comp)[0] if n > 2 else ""
    p.sending_facility = f[3].partition(comp)[0] if n > 3 else ""
    p.receiving_app = f[4].partition(comp)[0] if n > 4 else ""
    p.receiving_facility = f[5].partition(comp)[0] if n > 5 else ""
    p.message_time = f[6].partition(comp)[0] if n > 6 else ""
    mt = f[8].split(comp) if n > 8 else [""]
    code = mt[0]
    trig = mt[1] if len(mt) > 1 else ""
    p.structure = mt[2] if len(mt) > 2 else ""
    p.control_id = f[9] if n > 9 else ""
    p.processing_id = f[10].partition(comp)[0] if n > 10 else ""
    p.version = f[11].partition(comp)[0] if n > 11 else ""
    p.accept_ack_type = f[14] if n > 14 else ""
    p.app_ack_type = f[15] if n > 15 else ""
    if n > 17:
        p.charset = f[17].partition(enc[1])[0].partition(comp)[0]
    if not code:
        p.problems.append(Hl7Problem("101", "MSH-9 message type is missing", "MSH", 1, 9))
    if not p.control_id:
        p.problems.append(Hl7Problem("101", "MSH-10 message control id is missing", "MSH", 1, 10))
    if not p.version:
        p.problems.append(Hl7Problem("101", "MSH-12 version id is missing", "MSH", 1, 12))
    if not trig and code:
        # EVN-1 carries the trigger in older ADT messages
        for s in segments[1:]:
            if s.startswith("EVN" + sep):
                ef = s.split(sep)
                trig = ef[1] if len(ef) > 1 else ""
                break
    p.message_type = f"{code}^{trig}" if trig else code
    for idx in range(1, len(segments)):
        s = segments[idx]
        sid = s[:3]
        if not _seg_ok(sid) or (len(s) > 3 and s[3] != sep):
            p.problems.append(Hl7Problem("100", f"segment {idx + 1} ('{s[:8]}...') is not a valid segment", sid if _seg_ok(sid) else "MSH", idx + 1))
            break
    required = REQUIRED_SEGMENTS.get(code)
    if required:
        present = {s[:3] for s in segments}
        for req in required:
            if req not in present:
                p.problems.append(Hl7Problem("100", f"required segment {req} is missing for {code}", req, 1))
    return p
