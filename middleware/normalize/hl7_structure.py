"""Per-structure checks before the ACK (pure): a scan of the peeked segments, not a parse.

For each message structure careloop maps (:data:`STRUCTURES`, tabulated in
docs/hl7v2-to-fhir.md) the checks answer one question: will normalization produce a
correct event from this message? What careloop needs is an error (the message is
answered AE and stored ``failed``); segments HL7 requires but careloop does not read,
and fields careloop reads only for detail, are warnings (severity W) and the message is
processed without them. ``structure: strict`` on a source turns the warnings into errors.

Field checks use the same datatype readers as the normalizer (``hl7_types``), on the
first non-empty repetition, so a message that passes them normalizes without error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from middleware.config.sources import Source

from .hl7_patient import read_ids
from .hl7_peek import Hl7Problem, Peek
from .hl7_types import Ctx, Rep, duration, make_ctx, nm_value, tq_duration, ts_parts


@dataclass(frozen=True)
class Structure:
    """What one message structure must carry for careloop."""

    name: str  # HL7 abstract message structure, e.g. ADT_A01
    needs: tuple[str, ...]  # segments careloop reads to build the event (missing: AE)
    hl7_required: tuple[str, ...]  # required by HL7, not read by careloop (missing: W)


_ADT_A01 = Structure("ADT_A01", ("PID", "PV1"), ("EVN",))
_SIU = Structure("SIU_S12", ("SCH", "PID"), ("RGS",))

#: message type (code^trigger) -> structure; HL7 v2.5.1 chapter 3 and 10 structures
STRUCTURES: dict[str, Structure] = {
    "ADT^A01": _ADT_A01, "ADT^A04": _ADT_A01, "ADT^A08": _ADT_A01, "ADT^A13": _ADT_A01,
    "ADT^A02": Structure("ADT_A02", ("PID", "PV1"), ("EVN",)),
    "ADT^A03": Structure("ADT_A03", ("PID", "PV1"), ("EVN",)),
    "ADT^A05": Structure("ADT_A05", ("PID", "PV1"), ("EVN",)),
    "ADT^A11": Structure("ADT_A09", ("PID", "PV1"), ("EVN",)),
    "ADT^A40": Structure("ADT_A39", ("PID", "MRG"), ("EVN",)),
    **{f"SIU^{t}": _SIU for t in ("S12", "S13", "S14", "S15", "S16", "S17", "S26")},
}

#: table 0004 patient class (PV1-2); another value is kept as a v2-0004 code, with a warning
PATIENT_CLASS = frozenset({"E", "I", "O", "P", "R", "B", "C", "N", "U"})
#: table 0278 filler status (SCH-25); another value reads as booked, with a warning
FILLER_STATUS = frozenset({"PENDING", "WAITLIST", "BOOKED", "STARTED", "COMPLETE", "CANCELLED", "DC",
                           "DELETED", "BLOCKED", "OVERBOOK", "NOSHOW"})
#: (segment, start TS field, duration NM field, units field) read for appointment times
#: TQ-3 durations that are valid but not read (months, "at", times)
_TQ_OTHER = re.compile(r"^[LXT]\d{1,16}$")
_RESOURCE_TIMES = (("AIS", 4, 7, 8), ("AIG", 8, 11, 12), ("AIL", 6, 9, 10), ("AIP", 6, 9, 10))


@dataclass
class StructureResult:
    mapped: bool  # careloop maps this message type
    errors: list[Hl7Problem]
    warnings: list[Hl7Problem]


_SPECIALS: dict[tuple[str, str, str, str], re.Pattern[str]] = {}


def _specials(ctx: Ctx) -> re.Pattern[str]:
    """A pattern finding the repetition, component, subcomponent or escape character."""
    key = (ctx.rep_sep, ctx.comp_sep, ctx.sub_sep, ctx.esc)
    rx = _SPECIALS.get(key)
    if rx is None:
        rx = re.compile("[" + re.escape("".join(key)) + "]")
        if len(_SPECIALS) < 64:
            _SPECIALS[key] = rx
    return rx


_TS_LENGTHS = frozenset({4, 6, 8, 10, 12, 14})


def ts_valid(value: str) -> bool:
    """``ts_parts(value) is not None``, with a fast path for the usual all-digit value
    (with or without a ``+/-ZZZZ`` offset)."""
    if len(value) > 9 and value[-5] in "+-":
        off = value[-4:]
        if not (off.isdigit() and off.isascii()) or int(off[:2]) * 60 + int(off[2:]) >= 1440:
            return False
        value = value[:-5]
    if value.isdigit() and len(value) in _TS_LENGTHS and value.isascii():
        y = int(value[:4])
        if not 1 < y < 9999:
            return False
        try:
            datetime(y, int(value[4:6] or 1), int(value[6:8] or 1), int(value[8:10] or 0), int(value[10:12] or 0),
                     int(value[12:14] or 0))
        except ValueError:
            return False
        return True
    return ts_parts(value) is not None


class _Scan:
    """The peeked segments by id, read as fields/repetitions/components on demand."""

    def __init__(self, p: Peek, ctx: Ctx) -> None:
        self.ctx = ctx
        self.sep = p.field_sep
        self._raw: dict[str, list[str]] = {}  # segment id -> segment texts, split when first read
        self._split: dict[str, list[list[str]]] = {}
        for s in p.segments[1:]:
            sid = s[:3]
            got = self._raw.get(sid)
            if got is None:
                self._raw[sid] = [s]
            else:
                got.append(s)
        self.msh = p.segments[0].split(self.sep) if p.segments else ["MSH"]
        self._special = _specials(ctx)

    def all(self, sid: str) -> list[list[str]]:
        segs = self._split.get(sid)
        if segs is None:
            segs = self._split[sid] = [s.split(self.sep) for s in self._raw.get(sid, ())]
        return segs

    def has(self, sid: str) -> bool:
        return sid in self._raw

    def first(self, sid: str) -> list[str] | None:
        segs = self.all(sid) if sid in self._raw else None
        return segs[0] if segs else None

    def reps(self, fields: list[str] | None, n: int) -> list[Rep]:
        """Non-empty repetitions of field ``n`` (as ``Seg.reps`` reads them)."""
        if fields is None or n >= len(fields) or not fields[n]:
            return []
        ctx = self.ctx
        out = []
        for r in fields[n].split(ctx.rep_sep):
            rep = Rep([c.split(ctx.sub_sep) for c in r.split(ctx.comp_sep)], ctx)
            if not rep.empty():
                out.append(rep)
        return out

    def v(self, fields: list[str] | None, n: int, comp: int = 1) -> str:
        if fields is None or n >= len(fields):
            return ""
        f = fields[n]
        if comp == 1 and self._special.search(f) is None:  # no delimiter, nothing to unescape: as sent
            return "" if f == '""' else f
        r = self.reps(fields, n)
        return r[0].c(comp) if r else ""


_CTX: dict[tuple[int, str, str], tuple[Source, Ctx]] = {}


def _ctx(source: Source, enc: str, sep: str) -> Ctx:
    """``make_ctx`` once per source and delimiters (sources are frozen; a reload makes new ones)."""
    key = (id(source), enc, sep)
    got = _CTX.get(key)
    if got is not None and got[0] is source:
        return got[1]
    ctx = make_ctx(source, enc, sep)
    if len(_CTX) >= 256:
        _CTX.clear()
    _CTX[key] = (source, ctx)
    return ctx


def check_structure(p: Peek, source: Source) -> StructureResult:
    """Check a peeked message (no E problems from :func:`peek`) against its structure."""
    code, _, trigger = p.message_type.upper().partition("^")
    spec = STRUCTURES.get(f"{code}^{trigger}")
    if spec is None:
        text = f"careloop has no mapping for {code or '(empty)'}^{trigger or '(empty)'}; stored, not processed"
        return StructureResult(False, [], [Hl7Problem("200" if code not in ("ADT", "SIU") else "201", text, "MSH", 1, 9, "W")])
    strict = source.hl7.structure == "strict"
    scan = _Scan(p, _ctx(source, p.encoding_chars, p.field_sep))
    errors: list[Hl7Problem] = []
    warnings: list[Hl7Problem] = []
    for sid in spec.needs:
        if not scan.has(sid):
            errors.append(Hl7Problem("100", f"{spec.name} needs a {sid} segment (careloop maps it)", sid, 1))
    for sid in spec.hl7_required:
        if not scan.has(sid):
            (errors if strict else warnings).append(
                Hl7Problem("100", f"required segment {sid} of {spec.name} is missing", sid, 1, None, "E" if strict else "W"))
    if errors:
        return StructureResult(True, errors, warnings)
    fields = _Fields(scan, errors, warnings, strict)
    fields.occurred_at()
    fields.patient()
    if code == "SIU":
        fields.siu()
    elif trigger == "A40":
        fields.merge()
    else:
        fields.visit()
    return StructureResult(True, errors, warnings)


class _Fields:
    """Datatype checks of the fields the normalizer reads."""

    def __init__(self, scan: _Scan, errors: list[Hl7Problem], warnings: list[Hl7Problem], strict: bool) -> None:
        self.scan, self.errors, self.warnings, self.strict = scan, errors, warnings, strict
        self.tz = scan.ctx.tz

    def _problem(self, needed: bool, code: str, text: str, sid: str, seq: int, fld: int | None) -> None:
        if needed or self.strict:
            self.errors.append(Hl7Problem(code, text, sid, seq, fld, "E"))
        else:
            self.warnings.append(Hl7Problem(code, text + "; processed without it", sid, seq, fld, "W"))

    def ts(self, sid: str, n: int, *, needed: bool, comp: int = 1) -> None:
        """Every ``sid``-``n`` that is valued must be a TS/DTM careloop can place in time."""
        for seq, seg in enumerate(self.scan.all(sid), start=1):
            value = self.scan.v(seg, n, comp)
            if value and not ts_valid(value):
                self._problem(needed, "102", f"{sid}-{n} is not a valid date/time", sid, seq, n)

    def occurred_at(self) -> None:
        """EVN-2, else EVN-6, else MSH-7 (as the normalizer reads it) must give a date/time."""
        evn = self.scan.first("EVN")
        found = False
        for seg, n, sid in ((evn, 2, "EVN"), (evn, 6, "EVN"), (self.scan.msh, 6, "MSH")):
            value = self.scan.v(seg, n)
            if not value:
                continue
            if ts_valid(value):
                found = True
            elif sid == "EVN":
                self._problem(False, "102", f"EVN-{n} is not a valid date/time", "EVN", 1, n)
        if not found:
            self.errors.append(Hl7Problem("101", "MSH-7 (or EVN-2/EVN-6) must give a valid date/time of the event", "MSH", 1, 7))

    def _has_key(self, fields: list[str] | None, numbers: tuple[int, ...]) -> bool:
        """Whether the patient key rule finds an identifier: some repetition that
        ``read_ids`` keeps (CX-1 valued, not an SSN); stops at the first."""
        if fields is None:
            return False
        ctx = self.scan.ctx
        for n in numbers:
            if n >= len(fields) or not fields[n]:
                continue
            for r in fields[n].split(ctx.rep_sep):  # built one repetition at a time, up to the first usable
                first = r.partition(ctx.comp_sep)[0]
                if not first or first == '""':
                    continue
                rep = Rep([c.split(ctx.sub_sep) for c in r.split(ctx.comp_sep)], ctx)
                if read_ids([rep]).items:
                    return True
        return False

    def patient(self) -> None:
        pid = self.scan.first("PID")
        if pid is None:
            return
        if not self._has_key(pid, (3, 2, 4)):
            self.errors.append(Hl7Problem("101", "PID-3 has no usable patient identifier", "PID", 1, 3))
        self.ts("PID", 7, needed=False)
        self.ts("PID", 29, needed=False)

    def visit(self) -> None:
        pv1 = self.scan.first("PV1")
        self.ts("PV1", 44, needed=True)
        self.ts("PV1", 45, needed=True)
        self.ts("DG1", 5, needed=False)
        cls = self.scan.v(pv1, 2).upper()
        if cls and cls not in PATIENT_CLASS:
            self.warnings.append(Hl7Problem("103", "PV1-2 patient class is not in table 0004; kept as sent", "PV1", 1, 2, "W"))

    def merge(self) -> None:
        mrg = self.scan.first("MRG")
        if not self._has_key(mrg, (1, 4)):
            self.errors.append(Hl7Problem("101", "MRG-1 has no usable prior patient identifier", "MRG", 1, 1))

    def siu(self) -> None:
        scan = self.scan
        sch = scan.first("SCH")
        if not (scan.v(sch, 1) or scan.v(sch, 2)):
            self.errors.append(Hl7Problem("101", "SCH-1 placer and SCH-2 filler appointment ids are both empty", "SCH", 1, 2))
        amount = scan.v(sch, 9)
        if amount and duration(amount, scan.v(sch, 10) or scan.v(sch, 10, 2)) is None:
            self._problem(True, "102", "SCH-9 is not a usable duration in SCH-10 units", "SCH", 1, 9)
        for rep in scan.reps(sch, 11):
            self._tq(rep)
        status = scan.v(sch, 25).upper() or scan.v(sch, 25, 2).upper()
        if status and status.replace(" ", "") not in FILLER_STATUS:
            self.warnings.append(Hl7Problem("103", "SCH-25 filler status is not in table 0278; read as booked", "SCH", 1, 25, "W"))
        for sid, start_f, dur_f, unit_f in _RESOURCE_TIMES:
            self.ts(sid, start_f, needed=True)
            for seq, seg in enumerate(scan.all(sid), start=1):
                amount = scan.v(seg, dur_f)
                if amount and duration(amount, scan.v(seg, unit_f) or scan.v(seg, unit_f, 2)) is None:
                    self._problem(True, "102", f"{sid}-{dur_f} is not a usable duration", sid, seq, dur_f)
        self.ts("TQ1", 7, needed=True)
        self.ts("TQ1", 8, needed=True)
        for seq, tq1 in enumerate(scan.all("TQ1"), start=1):
            tq1_reps = scan.reps(tq1, 6)
            if tq1_reps and tq1_reps[0].c(1) and duration(tq1_reps[0].c(1), tq1_reps[0].c(2, 1)) is None:
                self._problem(True, "102", "TQ1-6 is not a usable duration", "TQ1", seq, 6)
        self.ts("DG1", 5, needed=False)

    def _tq(self, rep: Rep) -> None:
        """SCH-11 (TQ): components 4 and 5 start and end; component 3 the duration, needed
        only when the end (component 5) is not given."""
        for comp in (4, 5):
            value = rep.c(comp, 1)
            if value and not ts_valid(value):
                self._problem(True, "102", f"SCH-11.{comp} is not a valid date/time", "SCH", 1, 11)
        dur = rep.c(3).strip().upper()
        if dur and dur != "INDEF" and not _TQ_OTHER.match(dur) and tq_duration(dur) is None:
            self._problem(not rep.c(5, 1), "102", "SCH-11.3 is not a TQ duration (S, M, H, D or W and a number)",
                          "SCH", 1, 11)


__all__ = ["STRUCTURES", "Structure", "StructureResult", "check_structure", "nm_value", "ts_parts"]
