"""HL7 v2 SIU/ADT -> FHIR R4 resources: the normalizer entry point (pure, no I/O).

``normalize_hl7(text, source)`` parses schema-less (unknown and Z segments are ignored
here and stay in the stored raw message): an ordinary message is split directly
(``hl7_types.split_segments``), anything unusual by python-hl7, with the same readings.
It reads the trigger from MSH-9.2 (EVN-1 when MSH-9.2 is empty; never from the structure
MSH-9.3, since ADT reuses structures such as ``ADT^A04^ADT_A01``) and maps:

* SIU^S12/S13/S14/S15/S16/S17/S26 -> Appointment (``hl7_siu``)
* ADT^A01/A02/A03/A04/A05/A08/A11/A13 -> Encounter (``hl7_adt``)
* ADT^A40 -> ``Merge`` of the MRG-1 patient into the PID patient

The Patient (from PID, ``hl7_patient``) is returned in ``Normalized.patient``;
``Normalized.resources`` holds the Appointment or Encounter. Field sources per
HL7 version are tabulated in docs/hl7v2-to-fhir.md.

Usage::

    text, _, _ = hl7_peek.decode(raw, source.hl7.charset_fallback)
    result = normalize_hl7(text, source)
"""
from __future__ import annotations

from datetime import datetime

import hl7

from middleware.config.sources import Source
from middleware.model import Merge, Normalized

from . import hl7_adt, hl7_siu
from .hl7_patient import pid_patient
from .hl7_types import ContentProblem, Json, Msg, Seg, make_ctx, split_segments, ts_datetime

__all__ = ["Hl7ContentError", "normalize_hl7"]


class Hl7ContentError(ValueError):
    """The message is well-formed but its content cannot be mapped.

    Carries what an ERR segment needs: ``segment`` id, its ``sequence`` (1-based
    occurrence), ``field`` number (``None`` for a whole segment) and ``code``
    from HL7 table 0357 (100 segment sequence error, 101 required field missing,
    102 data type error, 200 unsupported message type, 201 unsupported event code).
    """

    def __init__(self, text: str, segment: str = "MSH", sequence: int = 1, field: int | None = None,
                 code: str = "207") -> None:
        super().__init__(text)
        self.text = text
        self.segment = segment
        self.sequence = sequence
        self.field = field
        self.code = code


def _parse(text: str, source: Source, fast: bool = True) -> Msg:
    """The message's segments; split directly when it is written the ordinary way (``fast``),
    else by python-hl7 (the same readings either way: tests/unit/normalize/test_split_parse.py)."""
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7ContentError("message does not start with an MSH segment", "MSH", 1, None, "100")
    if "\n" in text:  # decode() already did this; tolerate callers that did not
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    field_sep, enc = text[3], text[4:8].split(text[3])[0]
    ctx = make_ctx(source, enc, field_sep)
    if fast and (segs := split_segments(text.strip(), ctx)) is not None:
        return Msg(tuple(segs), ctx)
    try:
        parsed = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises bare ParseException/ValueError/IndexError
        raise Hl7ContentError(f"message cannot be parsed: {exc}", "MSH", 1, None, "100") from exc
    return Msg(tuple(Seg(s, ctx) for s in parsed if len(s)), ctx)


def _trigger(msg: Msg, msh: Seg) -> str:
    trigger = msh.v(9, 2)
    if not trigger:
        evn = msg.first("EVN")
        trigger = evn.v(1) if evn is not None else ""
    return trigger.upper()


def _occurred_at(msg: Msg, msh: Seg) -> datetime:
    evn = msg.first("EVN")
    tz = msg.ctx.tz
    for seg, field in ((evn, 2), (evn, 6), (msh, 7)):
        if seg is not None and seg.v(field):
            dt = ts_datetime(seg.v(field), tz)
            if dt is not None:
                return dt
    raise Hl7ContentError("MSH-7 date/time of message is missing or invalid", "MSH", 1, 7, "101")


def normalize_hl7(text: str, source: Source) -> Normalized:
    """Map one decoded, CR-separated HL7 v2 message to FHIR R4 resources.

    Returns a :class:`Normalized` with the Patient, its key (``system|value``, never
    an SSN), the Appointment/Encounter, a ``Merge`` for A40, ``keep_status`` for
    A08 without PV1-45, and non-fatal ``warnings``.

    Raises :class:`Hl7ContentError` for an unsupported message type (200) or
    trigger (201), a missing required segment (100) or field (101), e.g. a
    message whose PID carries no usable patient identifier.
    """
    msg = _parse(text, source)
    msh = msg.segs[0]
    code = msh.v(9, 1).upper()
    trigger = _trigger(msg, msh)
    if code not in ("SIU", "ADT"):
        raise Hl7ContentError(f"unsupported message type {code or '(empty)'}", "MSH", 1, 9, "200")
    known = hl7_siu.TRIGGERS if code == "SIU" else hl7_adt.TRIGGERS | {"A40"}
    if trigger not in known:
        raise Hl7ContentError(f"unsupported trigger event {code}^{trigger or '(empty)'}", "MSH", 1, 9, "201")
    occurred_at = _occurred_at(msg, msh)
    warnings: list[str] = []
    try:
        pid = msg.first("PID")
        if pid is None:
            raise ContentProblem(f"{code}^{trigger} has no PID segment", "PID", 1, None, "100")
        try:
            patient, key = pid_patient(pid)
        except LookupError as exc:
            raise ContentProblem(str(exc), "PID", 1, 3, "101") from exc
        ref: Json = {"reference": f"Patient/{patient['id']}", "type": "Patient"}
        ident = next((i for i in patient["identifier"] if f"{i['system']}|{i['value']}" == key), None)
        if ident is not None:
            ref["identifier"] = {k: v for k, v in ident.items() if k in ("system", "value")}
        resources: list[Json] = []
        merge: Merge | None = None
        keep: frozenset[str] = frozenset()
        if code == "SIU":
            appt, w = hl7_siu.siu_appointment(msg, trigger, ref)
            resources.append(appt)
            warnings += w
        elif trigger == "A40":
            if len(msg.all("MRG")) > 1:
                warnings.append("A40 with several PID/MRG pairs: only the first pair is merged")
            prior = hl7_adt.merge_prior_key(msg)
            if prior is None:
                raise ContentProblem("MRG-1 has no usable prior patient identifier", "MRG", 1, 1, "101")
            merge = Merge(surviving_key=key, retired_key=prior)
        else:
            enc, keep_status, w = hl7_adt.adt_encounter(msg, trigger, ref, key)
            resources.append(enc)
            warnings += w
            if keep_status:
                keep = frozenset({enc["id"]})
    except ContentProblem as exc:
        raise Hl7ContentError(exc.text, exc.segment, exc.sequence, exc.field, exc.code) from exc
    return Normalized(
        source=source.name,
        message_type=f"{code}^{trigger}",
        trigger_event=trigger,
        control_id=msh.v(10),
        version=msh.v(12),
        occurred_at=occurred_at,
        patient=patient,
        patient_key=key,
        resources=resources,
        merge=merge,
        warnings=warnings,
        keep_status=keep,
    )
