"""ADT^A01/A02/A03/A04/A05/A08/A11/A13 -> FHIR R4 Encounter; ADT^A40 -> Merge.

Encounter.status (IG ConceptMap table-hl70003-to-encounter-status, then PV1-45):
A11 cancelled and A13 in-progress always (a cancel undoes the discharge, so a
PV1-45 still sent with A13 is not read as an end); otherwise a valued PV1-45
means finished; otherwise A01/A02 in-progress, A03 finished, A04/A05 planned.
A08 (update) cannot know the previous state: it takes the IG's PV1-2 status
(P planned, U unknown, others in-progress) and the Encounter id is returned in
``keep_status`` so the consumer keeps the status it already has.
"""
from __future__ import annotations

import hashlib

from .hl7_patient import read_ids
from .hl7_types import (
    V2,
    ContentProblem,
    Json,
    Msg,
    Rep,
    Seg,
    code_concept,
    cwe_concept,
    cx_identifier,
    pl_display,
    elapsed,
    ts_datetime,
    ts_fhir,
    xcn_reference,
)

TRIGGERS = frozenset({"A01", "A02", "A03", "A04", "A05", "A08", "A11", "A13"})
EVENT_STATUS = {"A01": "in-progress", "A02": "in-progress", "A03": "finished", "A04": "planned",
                "A05": "planned", "A11": "cancelled", "A13": "in-progress"}
#: table 0004 -> v3 ActCode (IG ConceptMap table-hl70004-to-v3-actcode); others stay v2-0004
CLASS_ACTCODE = {"E": ("EMER", "emergency"), "I": ("IMP", "inpatient encounter"),
                 "O": ("AMB", "ambulatory"), "P": ("PRENC", "pre-admission")}
ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
#: PV1 doctor fields -> v3 ParticipationType
DOCTOR_FIELDS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter"))
#: table 0052 -> diagnosis-role (IG map: A -> AD; W and F are unmatched and stay v2-0052)
DIAGNOSIS_ROLE = {"A": ("AD", "Admission diagnosis")}


def encounter_id(seed: str) -> str:
    """Deterministic Encounter.id: ``e-`` + first 16 hex of sha256(seed)."""
    return "e-" + hashlib.sha256(seed.encode("utf-8")).hexdigest()[:16]


def encounter_status(trigger: str, pv1: Seg | None) -> str:
    """Encounter.status by the module rule (see the module docstring)."""
    if trigger in ("A11", "A13"):
        return EVENT_STATUS[trigger]
    if pv1 is not None and pv1.v(45):
        return "finished"
    if trigger in EVENT_STATUS:
        return EVENT_STATUS[trigger]
    cls = pv1.v(2).upper() if pv1 is not None else ""
    return {"P": "planned", "U": "unknown"}.get(cls, "in-progress" if cls else "unknown")


def _class(pv1: Seg | None) -> Json:
    code = pv1.v(2).upper() if pv1 is not None else ""
    if code in CLASS_ACTCODE:
        act, display = CLASS_ACTCODE[code]
        return {"system": ACTCODE, "code": act, "display": display}
    if code:
        return {"system": V2 + "0004", "code": code}
    # Encounter.class is 1..1; the v3 NullFlavor UNK says we were not told
    return {"system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor", "code": "UNK", "display": "unknown"}


def _diagnoses(msg: Msg, patient_ref: Json) -> tuple[list[Json], list[Json]]:
    """DG1 segments -> (contained Conditions ``#dg1-N``, Encounter.diagnosis)."""
    contained: list[Json] = []
    diagnosis: list[Json] = []
    tz = msg.ctx.tz
    for n, dg1 in enumerate(msg.all("DG1"), start=1):
        rep = dg1.rep(3)
        code = cwe_concept(rep)
        if code and rep is not None and rep.c(1) and not rep.c(3) and dg1.v(2):
            # 2.3: DG1-2 coding method names the system when DG1-3.3 is empty
            fixed = cwe_concept(_with_system(rep, dg1.v(2)))
            code = fixed or code
        text = dg1.v(4)
        if text:
            code = dict(code or {})
            code.setdefault("text", text)
        if not code:
            continue
        cid = f"dg1-{dg1.v(1) or n}"
        cond: Json = {
            "resourceType": "Condition",
            "id": cid,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis"}]}],
            "code": code,
            "subject": {"reference": patient_ref["reference"]},
        }
        onset = ts_fhir(dg1.v(5), tz)
        if onset:
            cond["onsetDateTime"] = onset
        contained.append(cond)
        entry: Json = {"condition": {"reference": "#" + cid}}
        dtype = dg1.v(6).upper()
        if dtype:
            codings = [{"system": V2 + "0052", "code": dtype}]
            if dtype in DIAGNOSIS_ROLE:
                role, display = DIAGNOSIS_ROLE[dtype]
                codings.insert(0, {"system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                                   "code": role, "display": display})
            entry["use"] = {"coding": codings}
        rank = dg1.v(15)
        if rank.isdigit() and int(rank) > 0:
            entry["rank"] = int(rank)
        diagnosis.append(entry)
    return contained, diagnosis


def _with_system(rep: Rep, system: str) -> Rep:
    return Rep([[rep.c(1)], [rep.c(2)], [system]], rep.ctx)


def adt_encounter(msg: Msg, trigger: str, patient_ref: Json, patient_key: str) -> tuple[Json, bool, list[str]]:
    """Map an ADT message to (Encounter, keep_status, warnings).

    ``keep_status`` is True for A08 without PV1-45 (see module docstring).
    Raises ``ContentProblem`` (100) when PV1 is missing.
    """
    warnings: list[str] = []
    pv1 = msg.first("PV1")
    if pv1 is None:
        raise ContentProblem(f"ADT^{trigger} has no PV1 segment", "PV1", 1, None, "100")
    tz = msg.ctx.tz
    enc: Json = {"resourceType": "Encounter"}
    visit = cx_identifier(pv1.rep(19))
    start_raw = pv1.v(44)
    if visit is not None:
        ident = visit[0]
        ident["type"] = code_concept("VN", "0203", "Visit number")
        enc["id"] = encounter_id(f"{ident['system']}|{ident['value']}")
        enc["identifier"] = [ident]
    elif start_raw:
        enc["id"] = encounter_id(f"{patient_key}|{start_raw}")
        warnings.append("PV1-19 visit number is empty; Encounter.id from patient key + PV1-44")
    else:
        enc["id"] = encounter_id(f"{patient_key}|{msg.first('MSH').v(10) if msg.first('MSH') else ''}")  # type: ignore[union-attr]
        warnings.append("PV1-19 and PV1-44 are empty; Encounter.id is per message and will not correlate")
    status = encounter_status(trigger, pv1)
    keep = trigger == "A08" and not pv1.v(45)
    enc["status"] = status
    enc["class"] = _class(pv1)
    etype = cwe_concept(pv1.rep(4), "0007")
    if etype:
        enc["type"] = [etype]
    enc["subject"] = patient_ref
    participants = []
    for field, code, display in DOCTOR_FIELDS:
        for rep in pv1.reps(field):
            ref = xcn_reference(rep)
            if ref:
                participants.append({"type": [{"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}],
                                     "individual": ref})
    if participants:
        enc["participant"] = participants
    period: Json = {}
    start = ts_fhir(start_raw, tz)
    if start:
        period["start"] = start
    end = ts_fhir(pv1.v(45), tz) if trigger != "A13" else None
    if end:
        period["end"] = end
    if period:
        if start and end and not _ordered(start_raw, pv1.v(45), msg):
            del period["end"]
            warnings.append("PV1-45 is before PV1-44; period.end dropped")
        enc["period"] = period
    contained, diagnosis = _diagnoses(msg, patient_ref)
    if contained:
        enc["contained"] = contained
        enc["diagnosis"] = diagnosis
    hosp: Json = {}
    admit_source = cwe_concept(pv1.rep(14), "0023")
    if admit_source:
        hosp["admitSource"] = admit_source
    disposition = cwe_concept(pv1.rep(36), "0112")
    if disposition:
        hosp["dischargeDisposition"] = disposition
    if hosp:
        enc["hospitalization"] = hosp
    locations: list[Json] = []
    here = pl_display(pv1.rep(3))
    if here:
        locations.append({"location": {"display": here}, "status": "completed" if status == "finished" else "active"})
    prior = pl_display(pv1.rep(6))
    if prior and trigger == "A02":
        locations.append({"location": {"display": prior}, "status": "completed"})
    if locations:
        enc["location"] = locations
    provider = pv1.v(39) or (msg.first("MSH").v(4) if msg.first("MSH") else "")  # type: ignore[union-attr]
    if provider:
        enc["serviceProvider"] = {"display": provider}
    return enc, keep, warnings


def _ordered(a: str, b: str, msg: Msg) -> bool:
    """True unless PV1-45 is provably before PV1-44 (compared in elapsed time)."""
    da, db = ts_datetime(a, msg.ctx.tz), ts_datetime(b, msg.ctx.tz)
    return da is None or db is None or elapsed(da, db).total_seconds() >= 0


def merge_prior_key(msg: Msg) -> str | None:
    """The retired patient's key from MRG-1 (then MRG-4), by the patient key rule."""
    mrg = msg.first("MRG")
    if mrg is None:
        raise ContentProblem("ADT^A40 has no MRG segment", "MRG", 1, None, "100")
    ids = read_ids([*mrg.reps(1), *mrg.reps(4)])
    return ids.key(msg.ctx.settings.mrn_authority)
