"""FHIR R4B / R5 resources -> the R4 model events are derived from (pure functions).

Only Appointment, Encounter and CarePlan are converted; any other resource is returned
unchanged. The conversion is driven by the *shape* of each element, so an R4 resource
passes through untouched and a mislabelled source cannot break it; ``version`` (from
the source config or ``meta.profile``) only decides whether a status code is read as R5.

Mapping (R5 -> R4), following the cross-version maps:

* Encounter: ``completed``/``discharged``/``discontinued`` -> ``finished``, ``on-hold`` ->
  ``onleave``; while ``in-progress`` the R5 ``subjectStatus`` (arrived, triaged, on-leave)
  refines the R4 status; ``actualPeriod`` -> ``period``; list ``class`` -> one Coding;
  ``admission`` -> ``hospitalization``; ``participant.actor`` -> ``individual``;
  ``reason``/``diagnosis`` CodeableReferences -> ``reasonCode``/``reasonReference``/``condition``.
* Appointment: ``serviceType``/``reason`` CodeableReferences -> CodeableConcepts and
  References; ``class`` and other R5-only elements -> cross-version extensions;
  ``subject`` -> a patient participant when none is listed; ``note`` -> ``comment``.
* CarePlan: an activity without ``detail`` (R5) keeps ``plannedActivityReference`` as
  ``reference`` and ``performedActivity`` as ``outcome*``; when it has no reference it gets
  a ``detail`` whose status is ``completed`` once something was performed, else ``unknown``
  (R4 forbids detail next to reference, invariant cpl-3).

Patient identity: :func:`patient_key_from_reference` returns ``"<system>|<MRN>"`` like the
HL7v2 normalizer, so one patient is the same key whichever source reported the change.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

Json = dict[str, Any]
PatientFetch = Callable[[str], "Json | None"]  # patient id -> Patient resource (or None)

XV = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

_R5_ENCOUNTER_STATUS = {
    "completed": "finished", "discharged": "finished", "discontinued": "finished", "on-hold": "onleave",
}
_SUBJECT_STATUS = {"arrived": "arrived", "triaged": "triaged", "on-leave": "onleave"}
_ENCOUNTER_R5_ONLY = ("plannedStartDate", "plannedEndDate", "virtualService", "careTeam", "dietPreference",
                      "specialArrangement", "specialCourtesy")
_APPOINTMENT_R5_ONLY = ("cancellationDate", "virtualService", "previousAppointment", "originatingAppointment",
                        "replaces", "account", "recurrenceId", "occurrenceChanged", "recurrenceTemplate")
CONVERTED = ("Appointment", "Encounter", "CarePlan")


def detect_version(resource: Json, configured: str | None = None) -> str:
    """``"R4"``, ``"R4B"`` or ``"R5"``: ``meta.profile`` wins, then R5-only shapes, then the config."""
    for p in (resource.get("meta") or {}).get("profile") or []:
        if "/5.0/" in p or "/R5/" in p:
            return "R5"
        if "/4.3/" in p or "/R4B/" in p:
            return "R4B"
    if _looks_r5(resource):
        return "R5"
    return configured or "R4"


def _looks_r5(r: Json) -> bool:
    rt = r.get("resourceType")
    if rt == "Encounter":
        return isinstance(r.get("class"), list) or "actualPeriod" in r or "subjectStatus" in r or "admission" in r \
            or r.get("status") in ("completed", "discharged", "discontinued")
    if rt == "Appointment":
        return isinstance(r.get("class"), list) or "subject" in r or any(
            isinstance(s, dict) and ("concept" in s or "reference" in s) for s in r.get("serviceType") or [])
    if rt == "CarePlan":
        return any("plannedActivityReference" in a or "performedActivity" in a for a in r.get("activity") or [])
    return False


def to_r4(resource: Json, version: str | None = None) -> Json:
    """Return an R4 copy of an Appointment / Encounter / CarePlan (other types unchanged).

    ``version`` is the source's configured FHIR version; shapes are converted regardless.
    Never mutates its argument; raises nothing for unexpected shapes (they are dropped).
    """
    rt = resource.get("resourceType")
    if rt not in CONVERTED:
        return resource
    ver = detect_version(resource, version)
    if ver == "R4" and not _looks_r5(resource):
        return resource
    r = copy.deepcopy(resource)
    if rt == "Encounter":
        _encounter(r, ver)
    elif rt == "Appointment":
        _appointment(r)
    else:
        _careplan(r)
    meta = r.get("meta")
    if isinstance(meta, dict) and meta.get("profile"):
        meta["profile"] = [p for p in meta["profile"] if "/5.0/" not in p and "/R5/" not in p] or None
        if meta["profile"] is None:
            del meta["profile"]
    return r


# -- helpers ------------------------------------------------------------------------------
def _ext(r: Json, name: str, key: str, value: Any) -> None:
    r.setdefault("extension", []).append({"url": XV + name, key: value})


def _concepts(items: list[Json] | None) -> list[Json]:
    """CodeableReference list -> its CodeableConcepts (R4 CodeableConcept lists pass through)."""
    out = []
    for it in items or []:
        if "concept" in it:
            out.append(it["concept"])
        elif "reference" not in it:
            out.append(it)
    return out


def _refs(items: list[Json] | None) -> list[Json]:
    return [it["reference"] for it in items or [] if isinstance(it.get("reference"), dict)]


def _reason(r: Json) -> None:
    """R5 ``reason`` (Encounter: ``[{use, value[]}]``; Appointment: CodeableReference[])."""
    reason = r.pop("reason", None)
    if not reason:
        return
    flat: list[Json] = []
    for it in reason:
        flat += it.get("value", []) if "value" in it or "use" in it else [it]
    if codes := _concepts(flat):
        r.setdefault("reasonCode", []).extend(codes)
    if refs := _refs(flat):
        r.setdefault("reasonReference", []).extend(refs)


# -- Encounter ----------------------------------------------------------------------------
def _encounter(r: Json, ver: str) -> None:
    status = r.get("status")
    subject_status = r.pop("subjectStatus", None)
    if status in _R5_ENCOUNTER_STATUS:
        r["status"] = _R5_ENCOUNTER_STATUS[status]
    elif status == "in-progress" and subject_status:
        code = next((c.get("code") for c in subject_status.get("coding") or [] if c.get("code")), None)
        r["status"] = _SUBJECT_STATUS.get(code or "", "in-progress")
    if subject_status:
        _ext(r, "Encounter.subjectStatus", "valueCodeableConcept", subject_status)
    cls = r.get("class")
    if isinstance(cls, list):
        coding = next((c for cc in cls for c in cc.get("coding") or []), None)
        if coding:
            r["class"] = coding
        else:
            del r["class"]
    if "actualPeriod" in r:
        r["period"] = r.pop("actualPeriod")
    if "admission" in r:
        r["hospitalization"] = r.pop("admission")
    st = r.get("serviceType")
    if isinstance(st, list):
        concepts = _concepts(st)
        if concepts:
            r["serviceType"] = concepts[0]
        else:
            del r["serviceType"]
    for p in r.get("participant") or []:
        if "actor" in p:
            actor = p.pop("actor")
            if str(actor.get("reference", "")).split("/")[-2:-1] in (["Practitioner"], ["PractitionerRole"], ["RelatedPerson"]):
                p["individual"] = actor
    _reason(r)
    diags = []
    for d in r.get("diagnosis") or []:
        cond = d.get("condition")
        if isinstance(cond, list):
            refs = _refs(cond)
            uses = d.get("use") if isinstance(d.get("use"), list) else None
            for ref in refs:
                nd: Json = {"condition": ref}
                if uses:
                    nd["use"] = uses[0]
                diags.append(nd)
        else:
            diags.append(d)
    if "diagnosis" in r:
        r["diagnosis"] = diags
        if not diags:
            del r["diagnosis"]
    for loc in r.get("location") or []:
        if "form" in loc:
            loc["physicalType"] = loc.pop("form")
    for k in _ENCOUNTER_R5_ONLY:
        r.pop(k, None)


# -- Appointment --------------------------------------------------------------------------
def _appointment(r: Json) -> None:
    cls = r.pop("class", None)
    for c in cls or []:
        _ext(r, "Appointment.class", "valueCodeableConcept", c)
    if isinstance(r.get("serviceType"), list):
        refs = _refs(r["serviceType"])
        r["serviceType"] = _concepts(r["serviceType"])
        for ref in refs:
            _ext(r, "Appointment.serviceType", "valueReference", ref)
        if not r["serviceType"]:
            del r["serviceType"]
    _reason(r)
    notes = r.pop("note", None)
    if notes and "comment" not in r:
        r["comment"] = "\n".join(n.get("text", "") for n in notes if n.get("text"))
    instr = r.get("patientInstruction")
    if isinstance(instr, list):
        texts = [c.get("concept", {}).get("text") for c in instr if c.get("concept", {}).get("text")]
        r["patientInstruction"] = "\n".join(texts)
        if not r["patientInstruction"]:
            del r["patientInstruction"]
    subject = r.pop("subject", None)
    parts = r.setdefault("participant", [])
    for p in parts:
        if isinstance(p.get("required"), bool):
            p["required"] = "required" if p["required"] else "optional"
    if subject and not any((p.get("actor") or {}).get("reference") == subject.get("reference") for p in parts):
        parts.append({"actor": subject, "status": "accepted"})
    for k in _APPOINTMENT_R5_ONLY:
        if k in r:
            v = r.pop(k)
            if k == "cancellationDate":
                _ext(r, "Appointment.cancellationDate", "valueDateTime", v)


# -- CarePlan -----------------------------------------------------------------------------
def _careplan(r: Json) -> None:
    if isinstance(r.get("addresses"), list):
        r["addresses"] = _refs(r["addresses"]) + [a for a in r["addresses"] if "reference" in a and isinstance(a["reference"], str)]
        if not r["addresses"]:
            del r["addresses"]
    if "custodian" in r and "author" not in r:
        r["author"] = r.pop("custodian")
    acts = []
    for a in r.get("activity") or []:
        if "detail" in a or "reference" in a:  # already R4-shaped
            acts.append(a)
            continue
        out: Json = {k: v for k, v in a.items() if k in ("id", "extension", "progress")}
        performed = a.get("performedActivity") or []
        if codes := _concepts(performed):
            out["outcomeCodeableConcept"] = codes
        if refs := _refs(performed):
            out["outcomeReference"] = refs
        if "plannedActivityReference" in a:
            out["reference"] = a["plannedActivityReference"]
        else:
            out["detail"] = {"status": "completed" if performed else "unknown"}
            if codes:
                out["detail"]["code"] = codes[0]
        acts.append(out)
    if acts:
        r["activity"] = acts


# -- patient identity ---------------------------------------------------------------------
def patient_reference(resource: Json) -> Json | None:
    """The Reference to the patient of an Appointment / Encounter / CarePlan (or ``None``)."""
    if resource.get("resourceType") == "Appointment":
        for p in resource.get("participant") or []:
            actor = p.get("actor") or {}
            if str(actor.get("reference", "")).split("/")[-2:-1] == ["Patient"] or actor.get("type") == "Patient":
                return actor
        return resource.get("subject")
    ref = resource.get("subject") or resource.get("patient")
    return ref if isinstance(ref, dict) else None


def patient_id(ref: Json | None) -> str | None:
    """``Patient/123``, ``http://x/fhir/Patient/123/_history/2`` -> ``123``."""
    raw = str((ref or {}).get("reference") or "")
    parts = [p for p in raw.split("/") if p]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == "Patient":
        return parts[-1]
    return None


def _type_codes(ident: Json) -> set[str]:
    return {c.get("code", "") for c in ((ident.get("type") or {}).get("coding") or [])}


def mr_key(identifiers: list[Json], systems: list[str]) -> str | None:
    """``system|value`` of the patient identifier used as key.

    Preference: an identifier whose system is configured (in the order given), then the
    first MR-typed identifier; an identifier typed SS/SSN is never a key.
    """
    usable = [i for i in identifiers if i.get("system") and i.get("value") and not (_type_codes(i) & {"SS", "SSN"})]
    for system in systems:
        for i in usable:
            if i["system"] == system:
                return f"{i['system']}|{i['value']}"
    for i in usable:
        if "MR" in _type_codes(i):
            return f"{i['system']}|{i['value']}"
    return None


def source_systems(source: Any) -> list[str]:
    """Identifier systems a source names for patients: its MRN authority's system, then FHIR systems."""
    out: list[str] = []
    hl7 = getattr(source, "hl7", None)
    if hl7 is not None and getattr(hl7, "mrn_authority", None):
        out.append(hl7.system_for(hl7.mrn_authority))
    fhir = getattr(source, "fhir", None)
    out += list(getattr(fhir, "identifier_systems", []) or [])
    return out


def patient_key_from_reference(
    resource: Json, source: Any, fetch: PatientFetch | None = None, patient: Json | None = None
) -> str | None:
    """The patient key of a resource, as the HL7v2 side would compute it.

    ``source`` is a :class:`~middleware.config.sources.Source` or a source name. Order:
    the given or contained ``patient``; ``reference.identifier`` when it is MR-typed or
    of a configured system (or the only identifier, absent configuration); the Patient
    fetched through ``fetch``; else ``"<source>|Patient/<id>"``. ``None`` when the
    resource names no patient. ``fetch`` errors propagate to the caller.
    """
    name = source if isinstance(source, str) else getattr(source, "name", "default")
    systems = source_systems(source)
    ref = patient_reference(resource)
    if ref is None and patient is None:
        return None
    ref = ref or {}
    raw = str(ref.get("reference") or "")
    if patient is None and raw.startswith("#"):
        patient = next((c for c in resource.get("contained") or [] if c.get("id") == raw[1:]), None)
    if patient is not None and (key := mr_key(patient.get("identifier") or [], systems)):
        return key
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
        key = mr_key([ident], systems)
        if key or not systems:
            return key or f"{ident['system']}|{ident['value']}"
    pid = patient_id(ref)
    if pid and fetch is not None and patient is None:
        fetched = fetch(pid)
        if fetched is not None and (key := mr_key(fetched.get("identifier") or [], systems)):
            return key
    if pid:
        return f"{name}|Patient/{pid}"
    return None
