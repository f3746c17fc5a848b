"""HL7 acknowledgements (pure): original-mode AA/AE/AR and enhanced-mode CA/CE/CR,
with an ERR segment in the form of the message's HL7 version.

Before v2.5, ERR-1 carries the location and code (ELD); from v2.5, ERR-2 (location),
ERR-3 (HL7 table 0357 code), ERR-4 (severity) and ERR-8 (text).
"""
from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

from ..normalize.hl7_peek import Hl7Problem, Peek, version_tuple

_counter = itertools.count(1)

_CODE_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


_VERSIONS: dict[str, tuple[int, ...]] = {}
_SPECIALS: dict[tuple[str, str], str] = {}


def _version_tuple(v: str) -> tuple[int, ...]:
    vt = _VERSIONS.get(v)
    if vt is not None:
        return vt
    vt = version_tuple(v) or (2, 5)
    if len(_VERSIONS) < 256:
        _VERSIONS[v] = vt
    return vt


def _echo(value: str) -> str:
    """A field of the inbound MSH as sent (already encoded in the same delimiters), without
    the control characters that could break a segment or the MLLP frame."""
    if value.isprintable():
        return value
    return "".join(c for c in value if c.isprintable())


def _specials(sep: str, enc: str) -> str:
    """The characters :func:`_esc` replaces for these delimiters."""
    chars = _SPECIALS.get((sep, enc))
    if chars is None:
        chars = (enc[2] if len(enc) > 2 else "\\") + sep + enc[:2] + enc[3:4]
        if len(_SPECIALS) < 256:
            _SPECIALS[(sep, enc)] = chars
    return chars


def _esc(text: str, sep: str, enc: str) -> str:
    if not text.isprintable():
        text = "".join(c if c.isprintable() else " " for c in text)
    for c in _specials(sep, enc):
        if c in text:
            break
    else:
        return text  # nothing to escape (the usual case)
    esc = enc[2] if len(enc) > 2 else "\\"
    repl = {esc: f"{esc}E{esc}", sep: f"{esc}F{esc}"}
    if enc:
        repl[enc[0]] = f"{esc}S{esc}"
    if len(enc) > 1:
        repl[enc[1]] = f"{esc}R{esc}"
    if len(enc) > 3:
        repl[enc[3]] = f"{esc}T{esc}"
    return "".join(repl.get(c, c) for c in text)


_UTC_STAMP: list[Any] = [None, "", ""]  # [second it is for, "%Y%m%d%H%M%S", "%Y%m%d%H%M%S%z"]


def _stamps(now: datetime) -> tuple[str, str]:
    """``now`` as %Y%m%d%H%M%S and as %Y%m%d%H%M%S%z (formatted once per second for UTC)."""
    if now.tzinfo is not timezone.utc:
        sec = now.strftime("%Y%m%d%H%M%S")
        return sec, sec + now.strftime("%z")
    key = (now.year, now.month, now.day, now.hour, now.minute, now.second)
    c = _UTC_STAMP
    if c[0] != key:
        sec = now.strftime("%Y%m%d%H%M%S")
        c[1], c[2] = sec, sec + now.strftime("%z")
        c[0] = key
    return c[1], c[2]


def ack_code(kind: str, enhanced: bool) -> str:
    """``kind`` is "accept" | "error" | "reject" -> AA/AE/AR or CA/CE/CR."""
    table = {"accept": "A", "error": "E", "reject": "R"}
    return ("C" if enhanced else "A") + table[kind]


def wants_ack(peek: Peek, kind: str) -> bool:
    """Enhanced mode (MSH-15): AL always, NE never, ER only on error/reject, SU only on success."""
    if not peek.enhanced:
        return True
    mode = (peek.accept_ack_type or "AL").upper()
    if mode == "NE":
        return False
    if mode == "ER":
        return kind != "accept"
    if mode == "SU":
        return kind == "accept"
    return True


def build_ack(
    peek: Peek,
    kind: str,
    problems: list[Hl7Problem] | None = None,
    *,
    now: datetime | None = None,
    sending_app: str = "CARELOOP",
    enhanced: bool | None = None,
) -> str:
    """Return the ACK message text (CR-separated, no MLLP framing)."""
    problems = problems or []
    enhanced = peek.enhanced if enhanced is None else enhanced
    sep = peek.field_sep or "|"
    enc = peek.encoding_chars or "^~\\&"
    comp = enc[0]
    now = now or datetime.now(timezone.utc)
    sec, ts = _stamps(now)
    version = peek.version or "2.5.1"
    vt = _version_tuple(version)
    trigger = _echo(peek.message_type.split("^")[1]) if "^" in peek.message_type else ""
    mtype = "ACK"
    if trigger:
        mtype += comp + trigger
        if vt >= (2, 3, 1):
            mtype += comp + "ACK"
    ctl = f"CL{sec}{now.microsecond:06d}{next(_counter) % 100000:05d}"
    msh = sep.join(
        [
            "MSH",
            enc,
            _echo(peek.receiving_app) or sending_app,
            _echo(peek.receiving_facility),
            _echo(peek.sending_app),
            _echo(peek.sending_facility),
            ts,
            "",
            mtype,
            ctl,
            _echo(peek.processing_id) or "P",
            _echo(version),
        ]
    )
    if peek.charset:
        msh += sep * 6 + _echo(peek.charset)
    code = ack_code(kind, enhanced)
    msa = [
        "MSA",
        code,
        _echo(peek.control_id),  # MSA-2 echoes MSH-10 as sent
    ]
    if problems and vt < (2, 5):
        msa.append(_esc(problems[0].text, sep, enc)[:80])
    segments = [msh, sep.join(msa)]
    for p in problems:
        segments.append(_err_segment(p, vt, sep, enc))
    return "\r".join(segments) + "\r"


def _err_segment(p: Hl7Problem, vt: tuple[int, ...], sep: str, enc: str) -> str:
    comp = enc[0]
    sub = enc[3] if len(enc) > 3 else "&"
    code_text = _CODE_TEXT.get(p.code, "Application error")
    fld = "" if p.field is None else str(p.field)
    if vt < (2, 5):
        eld = comp.join([p.segment, str(p.sequence), fld, sub.join([p.code, _esc(code_text, sep, enc), "HL70357"])])
        return sep.join(["ERR", eld])
    erl = comp.join([p.segment, str(p.sequence), fld])
    cwe = comp.join([p.code, _esc(code_text, sep, enc), "HL70357"])
    fields = ["ERR", "", erl, cwe, p.severity or "E", "", "", "", _esc(p.text, sep, enc)]
    return sep.join(fields)
