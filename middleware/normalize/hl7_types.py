"""HL7 v2 datatypes -> FHIR R4 datatypes (pure functions, no I/O).

The accessors wrap python-hl7 containers: a :class:`Seg` gives fields by their
HL7 sequence number, each field is a list of :class:`Rep` (repetitions), and a
``Rep`` gives components and subcomponents by 1-based position, already
unescaped. ``""`` (the HL7 explicit null) reads as empty.

The converters (``ts_*``, ``cx_identifier``, ``xpn_name``, ``xad_address``,
``xtn_contact``, ``cwe_concept``, ``xcn_reference``, ``pl_display``,
``ei_identifier``) return ``None`` when the input carries nothing usable; they
never raise on malformed content. Maps follow the HL7 v2-to-FHIR IG ConceptMaps
(HL7/v2-to-fhir ``input/fsh``); deviations are listed in docs/hl7v2-to-fhir.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from hl7.containers import Repetition

from middleware.config.sources import Hl7Settings, Source

Json = dict[str, Any]

V2 = "http://terminology.hl7.org/CodeSystem/v2-"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"

ICD10 = "http://hl7.org/fhir/sid/icd-10"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
LOINC = "http://loinc.org"
#: a coding-system name with no canonical URI and no mapping: ``urn:careloop:cs:<name>``
LOCAL_CODE_SYSTEM = "urn:careloop:cs:"

#: HL7 table 0396 coding-system names -> canonical FHIR system URIs (upper-cased keys), after the
#: HL7 v2-to-FHIR guide's table 0396 mapping; the documented table is docs/rules.md "Code systems".
#: ``HL7nnnn`` / ``HL7nnnn`` names go to ``http://terminology.hl7.org/CodeSystem/v2-nnnn``.
#: A source overrides any name with ``hl7.coding_systems`` (``I10: http://hl7.org/fhir/sid/icd-10-cm``
#: for US senders that write I10 for ICD-10-CM).
CODING_SYSTEMS: dict[str, str] = {
    "I10": ICD10,  # WHO ICD-10 (table 0396); ICD-10-CM is I10C
    "ICD10": ICD10,
    "I10C": ICD10CM,
    "ICD10CM": ICD10CM,
    "ICD-10-CM": ICD10CM,
    "I10P": "http://www.cms.gov/Medicare/Coding/ICD10",  # ICD-10-PCS
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "ICD9": "http://hl7.org/fhir/sid/icd-9-cm",
    "SCT": SNOMED,
    "SNM": SNOMED,
    "SNOMED": SNOMED,
    "SNOMEDCT": SNOMED,
    "SNOMED-CT": SNOMED,
    "LN": LOINC,
    "LOINC": LOINC,
    "C4": CPT,
    "C5": CPT,
    "CPT": CPT,
    "CPT4": CPT,
    "HCPCS": HCPCS,
    "HCPC": HCPCS,
    "HCPT": "http://nucc.org/provider-taxonomy",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "UCUM": "http://unitsofmeasure.org",
    "ISO+": "http://unitsofmeasure.org",
    "ISO639": "urn:ietf:bcp:47",
    "NUCCPT": "http://nucc.org/provider-taxonomy",
    "NPI": "http://hl7.org/fhir/sid/us-npi",
}

_TABLE_SYSTEM = re.compile(r"^HL7?(\d{4})$", re.IGNORECASE)
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_HEX = re.compile(r"^[0-9A-Fa-f]+$")
#: HL7 NM: optional sign, digits, optional decimal point (no exponent, no "nan"/"inf")
_NM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
#: the longest duration read as an appointment or encounter length (a longer one is a misfit)
MAX_DURATION = timedelta(days=366)


# --------------------------------------------------------------------------- context


@dataclass(frozen=True)
class Ctx:
    """Per-message reading context: delimiters, source zone and settings."""

    settings: Hl7Settings
    tz: ZoneInfo
    field_sep: str = "|"
    comp_sep: str = "^"
    rep_sep: str = "~"
    esc: str = "\\"
    sub_sep: str = "&"


def source_zone(source: Source) -> ZoneInfo:
    """The IANA zone for timestamps without an offset.

    ``source.hl7.timezone`` when it was set explicitly, else ``source.timezone``.
    """
    h = source.hl7
    name = h.timezone if "timezone" in h.model_fields_set else source.timezone
    return ZoneInfo(name)


def make_ctx(source: Source, encoding_chars: str = "^~\\&", field_sep: str = "|") -> Ctx:
    """Build the context from MSH-1/MSH-2 (``^~\\&`` order: comp, rep, esc, sub)."""
    enc = (encoding_chars + "^~\\&"[len(encoding_chars):])[:4]
    return Ctx(source.hl7, source_zone(source), field_sep, enc[0], enc[1], enc[2], enc[3])


# --------------------------------------------------------------------------- escapes


def unescape(value: str, ctx: Ctx) -> str:
    """Resolve HL7 escape sequences; leave unknown or unterminated ones literal.

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` become the delimiters, ``\\.br\\`` and ``\\.sp\\``
    a newline, ``\\Xhh..\\`` the decoded bytes (UTF-8, else Latin-1); highlighting
    and charset switches (``\\H\\ \\N\\ \\Cxxyy\\ \\Mxxyyzz\\``) are dropped. A bare
    backslash (no closing escape character, as in some Z segments) is kept as is.
    """
    esc = ctx.esc
    if esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    simple = {"F": ctx.field_sep, "S": ctx.comp_sep, "T": ctx.sub_sep, "R": ctx.rep_sep, "E": esc}
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        j = value.find(esc, i + 1)
        if j < 0:
            out.append(value[i:])
            break
        body = value[i + 1 : j]
        if body in simple:
            out.append(simple[body])
        elif body in (".br", ".sp") or body.startswith(".sp"):
            out.append("\n")
        elif body in ("H", "N") or body.startswith((".in", ".ti", ".sk", ".ce", ".fi", ".nf")):
            pass
        elif body[:1] == "X" and len(body) > 1 and len(body) % 2 == 1 and _HEX.match(body[1:]):
            raw = bytes.fromhex(body[1:])
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(raw.decode("latin-1"))
        elif body[:1] in ("C", "M") and len(body) in (5, 7) and _HEX.match(body[1:]):
            pass
        else:
            # not an escape sequence: keep the backslash and go on after it
            out.append(ch)
            i += 1
            continue
        i = j + 1
    return "".join(out)


# --------------------------------------------------------------------------- accessors


class Rep:
    """One repetition of a field: components of subcomponents, 1-based access."""

    __slots__ = ("_c", "_ctx")

    def __init__(self, comps: list[list[str]], ctx: Ctx) -> None:
        self._c = comps
        self._ctx = ctx

    def c(self, comp: int, sub: int = 1) -> str:
        """Component ``comp``, subcomponent ``sub``, unescaped; "" if absent or ``""``."""
        try:
            v = self._c[comp - 1][sub - 1]
        except IndexError:
            return ""
        if not v or v == '""':
            return ""
        return unescape(v, self._ctx) if self._ctx.esc in v else v

    def subs(self, comp: int) -> list[str]:
        """All subcomponents of component ``comp`` (unescaped)."""
        if comp - 1 >= len(self._c):
            return []
        return [self.c(comp, k + 1) for k in range(len(self._c[comp - 1]))]

    def comp_rep(self, comp: int) -> Rep:
        """Component ``comp`` read as a datatype of its own (subcomponents -> components)."""
        if comp - 1 >= len(self._c):
            return Rep([], self._ctx)
        return Rep([[s] for s in self._c[comp - 1]], self._ctx)

    def empty(self) -> bool:
        return not any(s and s != '""' for comp in self._c for s in comp)

    @property
    def ctx(self) -> Ctx:
        return self._ctx


class Seg:
    """A python-hl7 segment read by HL7 sequence numbers (MSH-1 is the field separator)."""

    __slots__ = ("_s", "_ctx", "id")

    def __init__(self, segment: Any, ctx: Ctx) -> None:
        self._s = segment
        self._ctx = ctx
        first = segment[0] if len(segment) else ""
        # python-hl7 leaves a segment with no field separator ("PV1") as a plain string
        self.id = first if isinstance(first, str) else (str(first[0]) if len(first) else "")

    def reps(self, n: int) -> list[Rep]:
        """Non-empty repetitions of field ``n`` ([] if the field is absent)."""
        if n >= len(self._s):
            return []
        f = self._s[n]
        items = list(f)
        if not items:
            return []
        out: list[Rep] = []
        if not isinstance(items[0], Repetition):
            items = [items]  # a plain value: the field is one repetition of one component
            comps_list: list[list[list[str]]] = [[[str(x)] for x in items[0]]]
        else:
            comps_list = [
                [[s] if isinstance(s, str) else [str(x) for x in s] for s in r] for r in items
            ]
        for comps in comps_list:
            rep = Rep(comps, self._ctx)
            if not rep.empty():
                out.append(rep)
        return out

    def rep(self, n: int) -> Rep | None:
        """First non-empty repetition of field ``n``."""
        r = self.reps(n)
        return r[0] if r else None

    def v(self, n: int, comp: int = 1, sub: int = 1) -> str:
        """Field ``n`` component ``comp`` subcomponent ``sub`` of the first repetition."""
        r = self.rep(n)
        return r.c(comp, sub) if r else ""

    @property
    def ctx(self) -> Ctx:
        return self._ctx


class SplitSeg(Seg):
    """A segment read straight from its text, split on demand: the same readings as :class:`Seg`
    over python-hl7's containers (``tests/unit/normalize/test_split_parse.py`` compares both on
    every fixture) at a fraction of the cost, since python-hl7 builds a container for every
    field, repetition and component of the message, read or not.

    ``fields`` are the segment's field texts by HL7 sequence number; fields numbered 1 to
    ``plain`` are never split (MSH-1 and MSH-2, the separators themselves). ``plain=-1`` is a
    segment without any separator (``PV1``), which python-hl7 keeps as one string: its field 0
    then reads as one component per character."""

    __slots__ = ("_plain",)

    def __init__(self, fields: list[str], ctx: Ctx, plain: int = 0) -> None:
        self._s = fields
        self._ctx = ctx
        self._plain = plain
        # python-hl7 names a segment by the first repetition of its first field
        self.id = fields[0].split(ctx.rep_sep, 1)[0]

    def reps(self, n: int) -> list[Rep]:
        if n >= len(self._s):
            return []
        text = self._s[n]
        ctx = self._ctx
        if 0 < n <= self._plain or self._plain < 0:
            rep = Rep([[ch] for ch in text] if self._plain < 0 else [[text]], ctx)
            return [] if rep.empty() else [rep]
        out: list[Rep] = []
        cs, ss = ctx.comp_sep, ctx.sub_sep
        for r in text.split(ctx.rep_sep):
            rep = Rep([c.split(ss) for c in r.split(cs)], ctx)
            if not rep.empty():
                out.append(rep)
        return out


def split_segments(text: str, ctx: Ctx) -> list[Seg] | None:
    """The message's segments as :class:`SplitSeg` when it is written the ordinary way (one MSH
    first, four distinct encoding characters); None otherwise, for python-hl7 to parse with all
    its own rules. ``text`` is CR-separated, as :func:`hl7.parse` sees it after its ``strip``."""
    fs = ctx.field_sep
    end = text.find(fs, 4)
    enc = text[4:end]
    seps = {fs, ctx.comp_sep, ctx.rep_sep, ctx.esc, ctx.sub_sep}
    if end < 0 or len(enc) != 4 or enc != ctx.comp_sep + ctx.rep_sep + ctx.esc + ctx.sub_sep or len(seps) != 5 or seps & {"\r", "\n"}:
        return None
    lines = text.split("\r")
    rest = lines[0][end + 1:]
    out: list[Seg] = [SplitSeg(["MSH", fs, enc, *(rest.split(fs) if rest else [])], ctx, plain=2)]
    for line in lines[1:]:
        if line[:3] in ("MSH", "BHS", "FHS"):
            return None  # python-hl7 reads these with their own separators
        bare = not any(c in line for c in (fs, ctx.rep_sep, ctx.comp_sep, ctx.sub_sep))
        out.append(SplitSeg([line], ctx, plain=-1) if bare else SplitSeg(line.split(fs), ctx))
    return out


# --------------------------------------------------------------------------- time


@lru_cache(maxsize=256)
def ts_parts(value: str) -> tuple[datetime, int, bool] | None:
    """Parse a TS/DTM string into (aware-or-naive datetime, digits, has_offset).

    Cached: a message repeats its times (SCH, TQ1, AIS and AIL of an SIU carry the same start),
    and the result is immutable.

    ``digits`` is the precision: 4 year, 6 month, 8 day, 10 hour, 12 minute,
    14 second, 15 fractional. Returns ``None`` for anything not a TS/DTM.
    """
    m = _TS.match(value.strip())
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    if frac and not ss:
        return None  # DTM: a fraction only after the seconds (YYYY.123 is not a time)
    digits = 4 + sum(2 for g in (mo, d, hh, mi, ss) if g) + (1 if frac else 0)
    if not 1 < int(y) < 9999:
        return None  # years 1 and 9999 overflow once moved to UTC or by a duration
    try:
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        dt = datetime(int(y), int(mo or 1), int(d or 1), int(hh or 0), int(mi or 0), int(ss or 0), micro)
    except ValueError:
        return None
    if off:
        sign = 1 if off[0] == "+" else -1
        delta = timedelta(hours=int(off[1:3]), minutes=int(off[3:5]))
        if delta >= timedelta(hours=24):
            return None
        dt = dt.replace(tzinfo=timezone(sign * delta))
    return dt, digits, bool(off)


def ts_datetime(value: str, tz: ZoneInfo) -> datetime | None:
    """TS/DTM -> timezone-aware datetime (message offset kept, else the source zone).

    A date-only value becomes local midnight. Ambiguous local times (DST fall-back)
    take the first occurrence (``fold=0``).
    """
    p = ts_parts(value)
    if p is None:
        return None
    dt, _, has_off = p
    return dt if has_off else dt.replace(tzinfo=tz)


def ts_fhir(value: str, tz: ZoneInfo, *, instant: bool = False) -> str | None:
    """TS/DTM -> FHIR ``dateTime`` (or ``instant``) string.

    Precision is kept: ``2024``, ``2024-03``, ``2024-03-10`` stay partial dates for
    ``dateTime``; a value with a time gets seconds and an offset (the message's, else
    the source zone's at that local time). ``instant=True`` always gives a full
    date-time (a date-only value becomes local midnight).
    """
    p = ts_parts(value)
    if p is None:
        return None
    dt, digits, has_off = p
    if not instant and digits <= 8:
        return dt.strftime("%Y-%m-%d"[: {4: 2, 6: 5, 8: 8}[digits]])
    if not has_off:
        dt = dt.replace(tzinfo=tz)
    return fhir_instant(dt, fractional=digits > 14)


def add(dt: datetime, delta: timedelta) -> datetime | None:
    """``dt + delta`` in elapsed time (through UTC), shown in ``dt``'s zone; ``None``
    when the result is outside the years Python can represent.

    Plain ``+`` on a ZoneInfo datetime is wall-clock arithmetic and would give a
    wrong end for an appointment that spans a DST change.
    """
    try:
        return (dt.astimezone(timezone.utc) + delta).astimezone(dt.tzinfo)
    except OverflowError:
        return None


def elapsed(start: datetime, end: datetime) -> timedelta:
    """Elapsed time from ``start`` to ``end`` (through UTC, DST-safe)."""
    return end.astimezone(timezone.utc) - start.astimezone(timezone.utc)


def fhir_instant(dt: datetime, fractional: bool = False) -> str:
    """An aware datetime as a FHIR instant string (``+00:00`` kept as ``Z``-free offset)."""
    s = dt.isoformat(timespec="milliseconds" if fractional else "seconds")
    return s


def nm_value(amount: str) -> float | None:
    """An HL7 NM value as a float; ``None`` unless it is one (``1e3``, ``nan``, ``inf`` are not)."""
    a = amount.strip()
    if len(a) > 32 or not _NM.match(a):
        return None
    return float(a)


_UNIT_SECONDS: dict[str, float] = {
    **dict.fromkeys(("", "m", "min", "mins", "minute", "minutes", "mn"), 60.0),
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
    **dict.fromkeys(("w", "wk", "week", "weeks"), 604800.0),
}


def duration(amount: str, units: str) -> timedelta | None:
    """NM amount + CE units (ISO+/ANSI: s, min, h, d, wk; default minutes) -> timedelta.

    ``None`` (never an exception) for an amount that is not an NM, unknown units, or a
    length that is negative or over :data:`MAX_DURATION`.
    """
    n = nm_value(amount)
    per = _UNIT_SECONDS.get(units.strip().lower())
    if n is None or per is None:
        return None
    seconds = n * per
    if not 0 <= seconds <= MAX_DURATION.total_seconds():
        return None
    return timedelta(seconds=seconds)


def tq_duration(value: str) -> timedelta | None:
    """TQ-3 duration (``S10``, ``M30``, ``H1``, ``D2``, ``W1``) -> timedelta."""
    m = re.match(r"^([SMHDW])(\d{1,16}(?:\.\d{1,6})?)$", value.strip().upper())
    if not m:
        return None
    unit = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk"}[m.group(1)]
    return duration(m.group(2), unit)


# --------------------------------------------------------------------------- codes


def coding_system(name: str, settings: Hl7Settings, table: str | None = None) -> str | None:
    """Table 0396 name (``HL70203``, ``I10``, ``SCT``...) -> system URI.

    Empty name: the HL7 table's ``v2-XXXX`` system if ``table`` is given, else
    ``None``. The source's ``coding_systems`` come first (exact name, then upper-cased);
    then table 0396 (:data:`CODING_SYSTEMS`, ``HL7nnnn``); a local name maps through
    ``identifier_systems`` (older configurations) or becomes ``urn:careloop:cs:<name>``.
    """
    n = name.strip()
    if not n:
        return V2 + table if table else None
    if n.startswith(("http://", "https://", "urn:")):
        return n
    own = settings.coding_systems
    if own:
        mapped = own.get(n) or next((v for k, v in own.items() if k.upper() == n.upper()), None)
        if mapped:
            return mapped
    known = CODING_SYSTEMS.get(n.upper())
    if known:
        return known
    m = _TABLE_SYSTEM.match(n)
    if m:
        return V2 + m.group(1)
    return settings.identifier_systems.get(n) or f"{LOCAL_CODE_SYSTEM}{n}"


def cwe_concept(rep: Rep | None, table: str | None = None) -> Json | None:
    """CWE/CE/CNE -> CodeableConcept (both triplets; CWE-9 original text -> text).

    ``table`` is the HL7 table the field is bound to (e.g. ``"0112"``); it gives
    the system when CWE-3 is empty. Text-only values give ``{"text": ...}``.
    """
    if rep is None:
        return None
    settings = rep.ctx.settings
    codings: list[Json] = []
    for code_i, text_i, sys_i, ver_i in ((1, 2, 3, 7), (4, 5, 6, 8)):
        code = rep.c(code_i)
        if not code:
            continue
        coding: Json = {}
        system = coding_system(rep.c(sys_i), settings, table if code_i == 1 else None)
        if system:
            coding["system"] = system
        version = rep.c(ver_i)
        if version:
            coding["version"] = version
        coding["code"] = code
        if rep.c(text_i):
            coding["display"] = rep.c(text_i)
        codings.append(coding)
    text = rep.c(9) or (rep.c(2) if not codings else "")
    if not codings and not text:
        return None
    out: Json = {}
    if codings:
        out["coding"] = codings
    if text:
        out["text"] = text
    return out


def code_concept(code: str, table: str, display: str | None = None) -> Json:
    """A bare table code (ID/IS) -> CodeableConcept in ``v2-<table>``."""
    coding: Json = {"system": V2 + table, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


# --------------------------------------------------------------------------- identifiers


def hd_system(rep: Rep, comp: int, settings: Hl7Settings) -> tuple[str, str]:
    """HD in component ``comp`` (namespace & universal id & type) -> (authority, system).

    The namespace id names the authority; a universal id of type ISO/UUID without
    a configured mapping gives ``urn:oid:``/``urn:uuid:``.
    """
    ns, uid, utype = rep.c(comp, 1), rep.c(comp, 2), rep.c(comp, 3).upper()
    if ns:
        if ns in settings.identifier_systems or not uid:
            return ns, settings.system_for(ns)
    if uid:
        if uid in settings.identifier_systems:
            return ns or uid, settings.identifier_systems[uid]
        if utype == "ISO":
            return ns or uid, "urn:oid:" + uid
        if utype == "UUID":
            return ns or uid, "urn:uuid:" + uid
        return ns or uid, settings.system_for(ns or uid)
    return "", settings.system_for(None)


def cx_identifier(rep: Rep | None) -> tuple[Json, str, str] | None:
    """CX -> (Identifier, authority, type code); ``None`` if CX-1 is empty.

    system from CX-4 (or CX-6 assigning facility when CX-4 is empty) via
    ``Hl7Settings.system_for``; type from CX-5 in ``v2-0203``.
    """
    if rep is None or not rep.c(1):
        return None
    settings = rep.ctx.settings
    comp = 4 if (rep.c(4, 1) or rep.c(4, 2)) else 6
    authority, system = hd_system(rep, comp, settings)
    ident: Json = {}
    type_code = rep.c(5)
    if type_code:
        ident["type"] = code_concept(type_code, "0203")
    ident["system"] = system
    ident["value"] = rep.c(1)
    start, end = ts_fhir(rep.c(7), rep.ctx.tz), ts_fhir(rep.c(8), rep.ctx.tz)
    if start or end:
        ident["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    return ident, authority, type_code.upper()


def ei_identifier(rep: Rep | None) -> Json | None:
    """EI (entity^namespace^universal id^type) -> Identifier with ``system_for(namespace)``."""
    if rep is None or not rep.c(1):
        return None
    _, system = hd_system(Rep([[rep.c(2), rep.c(3), rep.c(4)]], rep.ctx), 1, rep.ctx.settings)
    return {"system": system, "value": rep.c(1)}


# --------------------------------------------------------------------------- names, addresses, telecom

#: table 0200 -> HumanName.use (IG ConceptMap)
NAME_USE = {"BAD": "old", "D": "usual", "L": "official", "M": "maiden", "MSK": "anonymous",
            "N": "nickname", "NAV": "temp", "R": "official", "TEMP": "temp"}


def xpn_name(rep: Rep | None) -> Json | None:
    """XPN -> HumanName (family FN-1, given XPN-2 + XPN-3, prefix 5, suffix 4 + 6, use 7)."""
    if rep is None:
        return None
    name: Json = {}
    use = NAME_USE.get(rep.c(7).upper())
    if use:
        name["use"] = use
    if rep.c(1, 1):
        name["family"] = rep.c(1, 1)
    given = [g for g in (rep.c(2), *rep.c(3).split(" ")) if g]
    if given:
        name["given"] = given
    if rep.c(5):
        name["prefix"] = [rep.c(5)]
    suffix = [s for s in (rep.c(4), rep.c(6)) if s]
    if suffix:
        name["suffix"] = suffix
    start, end = ts_fhir(rep.c(12), rep.ctx.tz), ts_fhir(rep.c(13), rep.ctx.tz)
    if start or end:
        name["period"] = {k: v for k, v in (("start", start), ("end", end)) if v}
    return name if ("family" in name or "given" in name) else None


#: table 0190 -> (Address.use, Address.type) (IG ConceptMaps AddressType[Use]/[Type])
ADDRESS_TYPE = {"H": ("home", None), "B": ("work", None), "O": ("work", None), "C": ("temp", None),
                "BA": ("old", None), "BI": ("billing", None), "M": (None, "postal"), "SH": (None, "postal")}


def xad_address(rep: Rep | None) -> Json | None:
    """XAD -> Address (lines 1.1 + 2, city 3, state 4, postalCode 5, country 6, use/type 7, district 9)."""
    if rep is None:
        return None
    addr: Json = {}
    use, typ = ADDRESS_TYPE.get(rep.c(7).upper(), (None, None))
    if use:
        addr["use"] = use
    if typ:
        addr["type"] = typ
    lines = [x for x in (rep.c(1, 1), rep.c(2)) if x]
    if lines:
        addr["line"] = lines
    for key, comp in (("city", 3), ("district", 9), ("state", 4), ("postalCode", 5), ("country", 6)):
        if rep.c(comp):
            addr[key] = rep.c(comp)
    return addr if len(addr) > (("use" in addr) + ("type" in addr)) else None


#: table 0201 -> ContactPoint.use; table 0202 -> ContactPoint.system (IG ConceptMaps)
TELECOM_USE = {"PRN": "home", "WPN": "work", "PRS": "mobile", "VHN": "home"}
TELECOM_SYSTEM = {"PH": "phone", "FX": "fax", "MD": "other", "SAT": "other", "BP": "pager",
                  "INTERNET": "email", "X.400": "email", "TDD": "other", "TTY": "other", "CP": "phone"}
_EXT = "http://hl7.org/fhir/StructureDefinition/contactpoint-"


def xtn_contact(rep: Rep | None, default_use: str | None = None) -> Json | None:
    """XTN -> ContactPoint, for both layouts.

    2.3 style: the number in XTN-1 (``(555)555-0101X12``) is the value as sent.
    2.5+: XTN-5/6/7/8 (country, area, local, extension) -> value ``"+C (A) L"`` and
    the IG's contactpoint-* extensions; XTN-12 (2.6+ unformatted) when 6/7 are
    empty; XTN-4 is the e-mail address. system from XTN-3 (e-mail if XTN-4, else
    phone when absent); use from XTN-2, else ``default_use``; XTN-3 CP -> mobile.
    """
    if rep is None:
        return None
    equip = rep.c(3).upper()
    email = rep.c(4)
    cp: Json = {}
    system = TELECOM_SYSTEM.get(equip) or ("email" if email else "phone")
    ext: list[Json] = []
    if system == "email":
        value = email or rep.c(1)
    elif rep.c(7):
        area, local = rep.c(6), rep.c(7)
        value = (f"+{rep.c(5)} " if rep.c(5) else "") + (f"({area}) " if area else "") + local
        if rep.c(8):
            value += f" x{rep.c(8)}"
        for key, comp in (("country", 5), ("area", 6), ("local", 7), ("extension", 8)):
            if rep.c(comp):
                ext.append({"url": _EXT + key, "valueString": rep.c(comp)})
    else:
        value = rep.c(1) or rep.c(12) or email
    if not value:
        return None
    cp["system"] = system
    cp["value"] = value
    use = "mobile" if equip == "CP" else TELECOM_USE.get(rep.c(2).upper(), default_use)
    if use:
        cp["use"] = use
    if ext:
        cp["extension"] = ext
    return cp


# --------------------------------------------------------------------------- people, places


def xcn_reference(rep: Rep | None) -> Json | None:
    """XCN -> logical Reference to a Practitioner: display "Prefix Given Middle Family Suffix Degree",
    identifier XCN-1 (system XCN-9, type XCN-13)."""
    if rep is None:
        return None
    parts = [rep.c(6), rep.c(3), rep.c(4), rep.c(2, 1), rep.c(5), rep.c(7)]
    display = " ".join(p for p in parts if p)
    ref: Json = {"type": "Practitioner"}
    if rep.c(1):
        _, system = hd_system(rep, 9, rep.ctx.settings)
        ident: Json = {"system": system, "value": rep.c(1)}
        if rep.c(13):
            ident["type"] = code_concept(rep.c(13), "0203")
        ref["identifier"] = ident
    if display:
        ref["display"] = display
    return ref if len(ref) > 1 else None


def pl_display(rep: Rep | None) -> str | None:
    """PL -> display "point of care room-bed, facility (description)"; ``None`` if empty."""
    if rep is None:
        return None
    room_bed = "-".join(x for x in (rep.c(2), rep.c(3)) if x)
    head = " ".join(x for x in (rep.c(1), room_bed) if x)
    if rep.c(7) or rep.c(8):
        head = " ".join(x for x in (head, rep.c(7), rep.c(8)) if x)
    facility = rep.c(4, 1)
    text = ", ".join(x for x in (head, facility) if x)
    if rep.c(9):
        text = f"{text} ({rep.c(9)})" if text else rep.c(9)
    return text or None


def text_join(values: list[str]) -> str:
    """Join FT/ST repetitions line by line, dropping empty ones."""
    return "\n".join(v for v in values if v)


# --------------------------------------------------------------------------- message


class ContentProblem(Exception):
    """A content error found while mapping; ``hl7v2`` turns it into ``Hl7ContentError``.

    ``code`` is from HL7 table 0357 (100 segment sequence, 101 required field
    missing, 102 data type, 103 table value not found, 201 unsupported event).
    """

    def __init__(self, text: str, segment: str, sequence: int = 1, field: int | None = None, code: str = "101"):
        super().__init__(text)
        self.text, self.segment, self.sequence, self.field, self.code = text, segment, sequence, field, code


@dataclass(frozen=True)
class Msg:
    """A parsed message: segments in order plus the MSH reading context."""

    segs: tuple[Seg, ...]
    ctx: Ctx

    def first(self, sid: str) -> Seg | None:
        """The first ``sid`` segment, or ``None``."""
        return next((s for s in self.segs if s.id == sid), None)

    def all(self, sid: str) -> list[Seg]:
        """Every ``sid`` segment in message order."""
        return [s for s in self.segs if s.id == sid]

    def between(self, sid: str, after: str, before: str) -> list[Seg]:
        """``sid`` segments after the first ``after`` and before the next ``before``."""
        out: list[Seg] = []
        started = False
        for s in self.segs:
            if s.id == after and not started:
                started = True
            elif started and s.id == before:
                break
            elif started and s.id == sid:
                out.append(s)
        return out
