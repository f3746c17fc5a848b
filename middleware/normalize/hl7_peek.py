"""Cheap, schema-less first look at an HL7v2 message: decoding and MSH fields.

This runs on the MLLP hot path before the ACK, so it only splits the MSH segment
and checks the segment ids; the per-structure checks are in ``hl7_structure`` and
full parsing happens after the message is durably stored.

Decoding follows a byte-order mark (UTF-8/16/32), else MSH-18 (HL7 table 0211), else
UTF-8, else the source's fallback codec; CRLF / LF segment ends become CR. The
original bytes are never modified by this module.

:func:`peek` and :func:`decode` never raise, whatever the bytes: what cannot be read
is reported as an ``Hl7Problem`` (severity E), and MSH-10 is still read whenever the
MSH segment and its field separator (MSH-1) can be found, so the ACK can echo it.
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

#: byte-order marks, longest first (the UTF-32-LE BOM starts with the UTF-16-LE one)
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
#: "MSH" at the start of a wide encoding sent without a BOM
_WIDE_MSH: tuple[tuple[bytes, str], ...] = (
    (b"M\x00\x00\x00S\x00\x00\x00H\x00\x00\x00", "utf-32-le"),
    (b"\x00\x00\x00M\x00\x00\x00S\x00\x00\x00H", "utf-32-be"),
    (b"M\x00S\x00H\x00", "utf-16-le"),
    (b"\x00M\x00S\x00H", "utf-16-be"),
)
#: MSH-2's fifth character (the truncation character) is defined from v2.7 on
TRUNCATION_FROM = (2, 7)
_DEFAULT_ENC = "^~\\&"


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
    encoding_chars: str = _DEFAULT_ENC
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


def version_tuple(v: str) -> tuple[int, ...]:
    """``"2.5.1"`` -> ``(2, 5, 1)``; digits up to the first non-number part; ``()`` if none."""
    out: list[int] = []
    for part in v.split("."):
        if not part.isdigit() or len(part) > 4:
            break
        out.append(int(part))
    return tuple(out)


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


def _wide_codec(data: bytes) -> tuple[str, int] | None:
    """(codec, BOM length) for a byte-order mark or a wide "MSH" at the start."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec, len(bom)
    for head, codec in _WIDE_MSH:
        if data.startswith(head):
            return codec, 0
    return None


def decode(raw: bytes, fallback: str = "cp1252") -> tuple[str, str, list[Hl7Problem]]:
    """Decode by BOM, else MSH-18, else UTF-8, else ``fallback``; return (text, codec, problems).

    Never raises. Bytes that cannot be decoded as their BOM (or wide "MSH") says give
    an E problem (102) and text decoded with replacement characters; an MSH-18 that
    does not match the bytes, or is not in table 0211, gives a W problem and ``fallback``.
    """
    problems: list[Hl7Problem] = []
    codec: str | None
    wide = _wide_codec(raw)
    if wide is not None:
        codec, skip = wide
        try:
            return _norm(raw[skip:].decode(codec)), codec, problems
        except UnicodeDecodeError:
            problems.append(Hl7Problem("102", f"bytes are not valid {codec.upper()} although they start like it", "MSH", 1))
            return _norm(raw[skip:].decode(codec, errors="replace")), "", problems
    data = raw
    fields = _msh_fields_latin1(data)
    declared = ""
    if fields and len(fields) > 17:
        declared = fields[17].split(fields[1][1] if len(fields[1]) > 1 else "~")[0].strip()
    codec = CHARSETS.get(declared.upper()) if declared else None
    if codec is not None and codec.startswith(("utf-16", "utf-32")):
        # MSH-18 was read as 8-bit text, so the message is not in a wide encoding
        problems.append(Hl7Problem("102", f"MSH-18 declares {declared[:20]} but the message is 8-bit text", "MSH", 1, 18, "W"))
        declared, codec = "", None
    if declared and codec is None:
        problems.append(
            Hl7Problem("103", f"MSH-18 character set '{declared[:40]}' is not in table 0211; used {fallback}", "MSH", 1, 18, "W")
        )
    elif codec is not None:
        try:
            return _norm(data.decode(codec)), codec, problems
        except UnicodeError:
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
    except (UnicodeError, LookupError):
        problems.append(Hl7Problem("102", f"message cannot be decoded with {fallback}", "MSH", 1, 18))
        return _norm(data.decode("latin-1")), "", problems


def _norm(text: str) -> str:
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.strip("\r\x00 \t\ufeff") + "\r"


_SEG_OK: dict[str, bool] = {}  # segment id -> matches _SEG_ID (memo; ids are few)
_DEFAULT_DELIMS = ("|", _DEFAULT_ENC)


def _seg_ok(sid: str) -> bool:
    ok = _SEG_OK.get(sid)
    if ok is None:
        ok = _SEG_ID.match(sid) is not None
        if len(_SEG_OK) < 4096:
            _SEG_OK[sid] = ok
    return ok


def _bad_delimiter(c: str) -> bool:
    """A character HL7 does not allow as a delimiter (letters, digits, space, controls)."""
    return c.isalnum() or c.isspace() or not c.isprintable() or ord(c) > 126


def valid_field_sep(sep: str) -> bool:
    return len(sep) == 1 and not _bad_delimiter(sep)


def encoding_problem(sep: str, enc: str, version: str) -> Hl7Problem | None:
    """Check MSH-2 against MSH-1: four characters (component, repetition, escape,
    subcomponent), or five with the truncation character from v2.7; refused only for a
    wrong count, a duplicate or a character not allowed as a delimiter. A fifth
    character before v2.7 is a warning (W)."""
    text = f"MSH-2 encoding characters '{enc[:12]}'"
    if len(enc) not in (4, 5):
        return Hl7Problem("102", f"{text} are invalid: expected 4 (or 5 from v2.7), got {len(enc)}", "MSH", 1, 2)
    if len(set(enc + sep)) != len(enc) + 1:
        return Hl7Problem("102", f"{text} are invalid: a delimiter is repeated", "MSH", 1, 2)
    if any(_bad_delimiter(c) for c in enc):
        return Hl7Problem("102", f"{text} are invalid: letters, digits, spaces and controls are not delimiters", "MSH", 1, 2)
    if len(enc) == 5 and version_tuple(version) < TRUNCATION_FROM:
        return Hl7Problem("102", f"{text}: the truncation character is defined from v2.7 (MSH-12 is {version[:12] or 'empty'})",
                          "MSH", 1, 2, "W")
    return None


def _read_msh(p: Peek, line: str, sep: str) -> list[str]:
    """Fill the MSH fields of ``p`` from its segment text (MSH-i is ``f[i - 1]``)."""
    f = line.split(sep)
    n = len(f)
    comp = p.encoding_chars[0]
    p.sending_app = f[2].partition(comp)[0] if n > 2 else ""
    p.sending_facility = f[3].partition(comp)[0] if n > 3 else ""
    p.receiving_app = f[4].partition(comp)[0] if n > 4 else ""
    p.receiving_facility = f[5].partition(comp)[0] if n > 5 else ""
    p.message_time = f[6].partition(comp)[0] if n > 6 else ""
    mt = f[8].split(comp) if n > 8 else [""]
    code = mt[0]
    trig = mt[1] if len(mt) > 1 else ""
    p.message_type = f"{code}^{trig}" if trig else code
    p.structure = mt[2] if len(mt) > 2 else ""
    p.control_id = f[9] if n > 9 else ""
    p.processing_id = f[10].partition(comp)[0] if n > 10 else ""
    p.version = f[11].partition(comp)[0] if n > 11 else ""
    p.accept_ack_type = f[14] if n > 14 else ""
    p.app_ack_type = f[15] if n > 15 else ""
    if n > 17 and len(p.encoding_chars) > 1:
        p.charset = f[17].partition(p.encoding_chars[1])[0].partition(comp)[0]
    return f


def _salvage(p: Peek, text: str | None, raw: bytes) -> None:
    """After a fatal problem: read the MSH fields (MSH-10 above all) from wherever an MSH
    segment with a usable field separator can be found, with the standard encoding
    characters, so the ACK still echoes MSH-10."""
    candidates = [text] if text else []
    candidates.append(raw[:65536].decode("latin-1"))
    for t in candidates:
        at = t.find("MSH")
        while at >= 0:
            line = t[at:].split("\r", 1)[0].split("\n", 1)[0]
            sep = line[3:4]
            if valid_field_sep(sep) and sep not in _DEFAULT_ENC:
                p.field_sep = sep
                p.encoding_chars = _DEFAULT_ENC
                _read_msh(p, line, sep)
                # keep the control id on one line and free of our separator
                p.control_id = p.control_id[:199]
                if not all(c.isprintable() for c in p.control_id):
                    p.control_id = ""
                return
            at = t.find("MSH", at + 3)


def peek(raw: bytes, fallback: str = "cp1252") -> Peek:
    """Decode and read MSH; record structural problems. Never raises."""
    try:
        return _peek(raw, fallback)
    except Exception as exc:  # a defect here must not stop a feed: answer AE and keep the bytes
        p = Peek()
        try:
            _salvage(p, None, raw)
        except Exception:
            p = Peek()
        p.problems.append(Hl7Problem("207", f"message could not be read ({type(exc).__name__})", "MSH", 1))
        return p


def _peek(raw: bytes, fallback: str) -> Peek:
    p = Peek()
    if not raw.strip(b"\r\n\x00 \t"):
        p.problems.append(Hl7Problem("100", "empty message", "MSH", 1))
        return p
    text, codec, problems = decode(raw, fallback)
    p.text, p.codec = text, codec
    if problems:
        p.problems.extend(problems)
        if any(x.severity == "E" for x in problems):
            _salvage(p, text, raw)
            return p
    if not text.startswith("MSH"):
        p.problems.append(Hl7Problem("100", "message does not start with an MSH segment", "MSH", 1))
        _salvage(p, text, raw)
        return p
    segments = [s for s in text.split("\r") if s]
    p.segments = segments
    msh = segments[0]
    sep = msh[3:4]
    if len(msh) < 8 or not valid_field_sep(sep):
        p.problems.append(Hl7Problem("101", "MSH segment is truncated or MSH-1 is not a field separator", "MSH", 1, 1))
        _salvage(p, text, raw)
        return p
    p.field_sep = sep
    enc = msh[4:].partition(sep)[0]
    if (sep, enc) != _DEFAULT_DELIMS:
        parts = msh.split(sep, 12)
        version = parts[11] if len(parts) > 11 else ""
        bad = encoding_problem(sep, enc, version.split("^")[0])
        if bad is not None:
            p.problems.append(bad)
            if bad.severity == "E":
                _salvage(p, text, raw)
                return p
        p.encoding_chars = enc
    _read_msh(p, msh, sep)
    code, _, trig = p.message_type.partition("^")
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
                trig = ef[1].partition(p.encoding_chars[0])[0] if len(ef) > 1 else ""
                if trig:
                    p.message_type = f"{code}^{trig}"
                break
    for idx in range(1, len(segments)):
        s = segments[idx]
        sid = s[:3]
        if not _seg_ok(sid) or (len(s) > 3 and s[3] != sep):
            shown = sid if _seg_ok(sid) else "MSH"
            p.problems.append(Hl7Problem("100", f"segment {idx + 1} is not a valid segment", shown, idx + 1 if shown != "MSH" else 1))
            break
    return p
