"""SIU^S12..S17/S26 -> FHIR R4 Appointment (pure functions).

Status: the trigger decides for S15/S16 (cancelled), S17 (entered-in-error) and
S26 (noshow); otherwise SCH-25 through table 0278 (IG map, with Dc -> cancelled
and Blocked/Overbook -> booked as documented deviations); otherwise booked.

Start/end by precedence (first source that has a start wins; its own duration
gives the end, else the first later source with an end or a duration):
AIS-4 (+AIS-7/AIS-8), AIG-8 (+AIG-11/12), AIL-6 (+AIL-9/10), AIP-6 (+AIP-9/10),
TQ1-7/TQ1-8 (+TQ1-6), SCH-11 TQ components 4/5 (+3; deprecated from 2.5, read
for backward compatibility), and SCH-9/SCH-10 as a duration only.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from .hl7_types import (
    add,
    elapsed,
    ContentProblem,
    Json,
    Msg,
    Seg,
    cwe_concept,
    duration,
    ei_identifier,
    fhir_instant,
    pl_display,
    text_join,
    tq_duration,
    ts_datetime,
    ts_parts,
    xcn_reference,
)

#: triggers whose meaning fixes Appointment.status
TRIGGER_STATUS = {"S15": "cancelled", "S16": "cancelled", "S17": "entered-in-error", "S26": "noshow"}
#: triggers this module maps
TRIGGERS = frozenset({"S12", "S13", "S14", "S15", "S16", "S17", "S26"})

#: table 0278 -> AppointmentStatus (IG ConceptMap; DC, BLOCKED, OVERBOOK are our additions)
FILLER_STATUS = {
    "PENDING": "pending", "WAITLIST": "waitlist", "BOOKED": "booked", "STARTED": "checked-in",
    "COMPLETE": "fulfilled", "CANCELLED": "cancelled", "DELETED": "entered-in-error",
    "NOSHOW": "noshow", "DC": "cancelled", "BLOCKED": "booked", "OVERBOOK": "booked",
}
#: table 0278 -> Appointment.participant.status
PARTICIPANT_STATUS = {
    "PENDING": "tentative", "WAITLIST": "tentative", "CANCELLED": "declined", "DELETED": "declined",
    "DC": "declined", "NOSHOW": "declined",
}

# (segment, start field, duration field, units field) in precedence order
_RESOURCE_TIMES = (("AIS", 4, 7, 8), ("AIG", 8, 11, 12), ("AIL", 6, 9, 10), ("AIP", 6, 9, 10))


def appointment_id(identifier: Json) -> str:
    """Deterministic Appointment.id: ``a-`` + first 16 hex of sha256(system|value)."""
    key = f"{identifier['system']}|{identifier['value']}"
    return "a-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def siu_status(trigger: str, sch: Seg) -> str:
    """Appointment.status from the trigger, else SCH-25 (table 0278), else booked."""
    if trigger in TRIGGER_STATUS:
        return TRIGGER_STATUS[trigger]
    code = sch.v(25).upper() or sch.v(25, 2).upper()
    return FILLER_STATUS.get(code.replace(" ", ""), "booked")


_Window = tuple[str, datetime | None, timedelta | None, datetime | None, bool]


def _ts(value: str, seg: Seg) -> tuple[datetime | None, bool]:
    """(aware datetime, date-only?) of a TS/DTM value."""
    p = ts_parts(value)
    if p is None:
        return None, False
    return ts_datetime(value, seg.ctx.tz), p[1] <= 8


def _seg_window(seg: Seg, start_f: int, dur_f: int, unit_f: int) -> tuple[datetime | None, timedelta | None, bool]:
    start, date_only = _ts(seg.v(start_f), seg)
    amount = seg.v(dur_f)
    dur = duration(amount, seg.v(unit_f) or seg.v(unit_f, 2)) if amount else None
    return start, dur, date_only


def _windows(msg: Msg, sch: Seg) -> list[_Window]:
    """Candidate (label, start, duration, end, date-only) in precedence order."""
    out: list[_Window] = []
    for sid, sf, df, uf in _RESOURCE_TIMES:
        for seg in msg.all(sid):
            start, dur, date_only = _seg_window(seg, sf, df, uf)
            if start or dur:
                out.append((f"{sid}-{sf}", start, dur, None, date_only))
    for tq1 in msg.all("TQ1"):
        (start, date_only), (end, _) = _ts(tq1.v(7), tq1), _ts(tq1.v(8), tq1)
        rep = tq1.rep(6)
        dur = duration(rep.c(1), rep.c(2, 1)) if rep and rep.c(1) else None
        if start or end or dur:
            out.append(("TQ1-7", start, dur, end, date_only))
    for rep in sch.reps(11):
        (start, date_only), (end, _) = _ts(rep.c(4, 1), sch), _ts(rep.c(5, 1), sch)
        dur = tq_duration(rep.c(3))
        if start or end or dur:
            out.append(("SCH-11", start, dur, end, date_only))
            break
    if sch.v(9):
        dur = duration(sch.v(9), sch.v(10) or sch.v(10, 2))
        if dur:
            out.append(("SCH-9", None, dur, None, False))
    return out


def appointment_times(msg: Msg, sch: Seg) -> tuple[datetime | None, datetime | None, str | None, bool]:
    """(start, end, source label, start is date-only) by the module's precedence."""
    cands = _windows(msg, sch)
    idx = next((i for i, c in enumerate(cands) if c[1] is not None), None)
    if idx is None:
        return None, None, None, False
    label, start, dur, end, date_only = cands[idx]
    assert start is not None
    if end is None and dur is not None:
        end = add(start, dur)
    for _, s2, d2, e2, _d in cands[idx + 1 :]:
        if end is not None:
            break
        if d2 is not None:
            end = add(start, d2)
        elif s2 is not None and e2 is not None:
            end = add(start, elapsed(s2, e2))
        elif e2 is not None:
            end = e2
    if end is not None and elapsed(start, end) <= timedelta(0):
        end = None
    return start, end, label, date_only


def _participant(actor: Json, status_code: str, type_: Json | None = None, period: Json | None = None) -> Json:
    p: Json = {}
    if type_:
        p["type"] = [type_]
    p["actor"] = actor
    p["required"] = "required"
    p["status"] = PARTICIPANT_STATUS.get(status_code.upper().replace(" ", ""), "accepted")
    if period:
        p["period"] = period
    return p


def _period(seg: Seg, sf: int, df: int, uf: int) -> Json | None:
    start, dur, _ = _seg_window(seg, sf, df, uf)
    if start is None:
        return None
    period: Json = {"start": fhir_instant(start)}
    end = add(start, dur) if dur is not None else None
    if end is not None:
        period["end"] = fhir_instant(end)
    return period


def _participants(msg: Msg, patient_ref: Json) -> list[Json]:
    parts = [_participant(patient_ref, "")]
    for aip in msg.all("AIP"):
        for rep in aip.reps(3):
            actor = xcn_reference(rep)
            if actor:
                parts.append(_participant(actor, aip.v(12), cwe_concept(aip.rep(4), "0182"), _period(aip, 6, 9, 10)))
    for ail in msg.all("AIL"):
        display = pl_display(ail.rep(3))
        if display:
            parts.append(
                _participant({"type": "Location", "display": display}, ail.v(12), cwe_concept(ail.rep(4), "0305"),
                             _period(ail, 6, 9, 10))
            )
    for aig in msg.all("AIG"):
        aig_rep = aig.rep(3)
        if aig_rep is None:
            continue
        aig_actor: Json = {"display": aig_rep.c(2) or aig_rep.c(1)}
        if aig_rep.c(1):
            concept = cwe_concept(aig_rep) or {}
            system = (concept.get("coding") or [{}])[0].get("system") or msg.ctx.settings.system_for(None)
            aig_actor["identifier"] = {"system": system, "value": aig_rep.c(1)}
        parts.append(_participant(aig_actor, aig.v(14), cwe_concept(aig.rep(4)), _period(aig, 8, 11, 12)))
    return parts


def siu_appointment(msg: Msg, trigger: str, patient_ref: Json) -> tuple[Json, list[str]]:
    """Map an SIU message to (Appointment, warnings).

    ``patient_ref`` is the Reference to the patient (``Patient/<id>`` + identifier).
    Raises ``ContentProblem`` (101) when SCH is missing or has neither SCH-1 nor SCH-2.
    """
    warnings: list[str] = []
    sch = msg.first("SCH")
    if sch is None:
        raise ContentProblem("SIU message has no SCH segment", "SCH", 1, None, "100")
    placer, filler = ei_identifier(sch.rep(1)), ei_identifier(sch.rep(2))
    key_ident = filler or placer
    if key_ident is None:
        raise ContentProblem("SCH-1 placer and SCH-2 filler appointment ids are both empty", "SCH", 1, 2, "101")
    appt: Json = {"resourceType": "Appointment", "id": appointment_id(key_ident)}
    identifiers: list[Json] = []
    if placer:
        identifiers.append({"type": _id_type("PLAC", "Placer Identifier"), **placer})
    if filler:
        identifiers.append({"type": _id_type("FILL", "Filler Identifier"), **filler})
    appt["identifier"] = identifiers
    appt["status"] = siu_status(trigger, sch)
    if appt["status"] in ("cancelled", "entered-in-error", "noshow"):
        reason = cwe_concept(sch.rep(6))
        if reason and appt["status"] == "cancelled":
            appt["cancelationReason"] = reason
    services = [c for c in (cwe_concept(s.rep(3)) for s in msg.all("AIS")) if c]
    if services:
        appt["serviceType"] = services
    appt_type = cwe_concept(sch.rep(8), "0277")
    if appt_type:
        appt["appointmentType"] = appt_type
    reason_code = cwe_concept(sch.rep(7), "0276")
    if reason_code is None and appt["status"] not in ("cancelled", "entered-in-error"):
        reason_code = cwe_concept(sch.rep(6))
    if reason_code:
        appt["reasonCode"] = [reason_code]
    start, end, label, date_only = appointment_times(msg, sch)
    if start is not None:
        if date_only:
            warnings.append(f"{label} has no time of day; Appointment.start set to local midnight")
        appt["start"] = fhir_instant(start)
        if end is not None:
            appt["end"] = fhir_instant(end)
            appt["minutesDuration"] = max(1, int(elapsed(start, end).total_seconds() // 60))
        else:
            warnings.append("appointment end unknown (no duration or end time)")
    elif appt["status"] not in ("proposed", "cancelled", "waitlist", "entered-in-error"):
        warnings.append("appointment start unknown (no AIS-4/AIG-8/AIL-6/AIP-6/TQ1-7/SCH-11)")
    comment = text_join([text_join([r.c(1) for r in n.reps(3)]) for n in msg.between("NTE", "SCH", "PID")])
    if comment:
        appt["comment"] = comment
    appt["participant"] = _participants(msg, patient_ref)
    return appt, warnings


def _id_type(code: str, display: str) -> Json:
    return {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code, "display": display}]}
