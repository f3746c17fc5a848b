"""PID -> FHIR R4 Patient, and the patient key rule (pure functions).

The patient key is ``"<system>|<value>"`` of, in order of preference:

1. the MR-typed identifier whose assigning authority (CX-4 namespace or universal
   id) equals ``Hl7Settings.mrn_authority``;
2. the first MR-typed identifier;
3. the first identifier that is not a social security number (PID-3 repetitions,
   then PID-2 and PID-4, which older feeds such as 2.3 use for the MRN).

Social security numbers are never a key and never reach the Patient resource:
PID-19 is not read, and identifiers typed SS/SSN, assigned by a social security
authority, or shaped ``ddd-dd-dddd`` without a type are dropped.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from .hl7_types import (
    Json,
    Rep,
    Seg,
    cwe_concept,
    cx_identifier,
    ts_fhir,
    xad_address,
    xpn_name,
    xtn_contact,
)

#: table 0001 -> AdministrativeGender (IG ConceptMap table-hl70001-to-administrative-gender)
GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "N": "other", "U": "unknown"}

_SSN_TYPES = frozenset({"SS", "SSN"})
_SSN_AUTHORITIES = frozenset({"SSA", "USSSA", "SSN", "US SSA", "2.16.840.1.113883.4.1"})
_SSN_SHAPE = re.compile(r"^\d{3}-\d{2}-\d{4}$")
_BCP47 = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
#: ISO 639-2 codes seen in PID-15 -> BCP-47
_ISO639_2 = {"ENG": "en", "SPA": "es", "FRE": "fr", "FRA": "fr", "GER": "de", "DEU": "de", "POR": "pt",
             "ITA": "it", "CHI": "zh", "ZHO": "zh", "VIE": "vi", "KOR": "ko", "RUS": "ru", "ARA": "ar",
             "TGL": "tl", "POL": "pl", "JPN": "ja", "HAT": "ht", "HIN": "hi"}
BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"


@dataclass(frozen=True)
class PatientIds:
    """Identifiers read from CX repetitions, SSNs removed, in message order."""

    items: tuple[tuple[Json, str, str], ...]  # (Identifier, authority, type code)

    def key(self, mrn_authority: str | None) -> str | None:
        """The patient key by the module's rule; ``None`` if no usable identifier."""
        mrs = [i for i in self.items if i[2] == "MR"]
        chosen = None
        if mrn_authority:
            chosen = next((i for i in mrs if i[1] == mrn_authority), None)
        chosen = chosen or (mrs[0] if mrs else None) or (self.items[0] if self.items else None)
        if chosen is None:
            return None
        ident = chosen[0]
        return f"{ident['system']}|{ident['value']}"

    def identifier_for(self, key: str | None) -> Json | None:
        """The Identifier whose ``system|value`` is ``key``."""
        for ident, _, _ in self.items:
            if f"{ident['system']}|{ident['value']}" == key:
                return ident
        return None


def is_ssn(ident: Json, authority: str, type_code: str) -> bool:
    """True for an identifier that is (or looks like) a social security number."""
    if type_code in _SSN_TYPES or authority.upper() in _SSN_AUTHORITIES:
        return True
    return not type_code and bool(_SSN_SHAPE.match(str(ident.get("value", ""))))


def read_ids(reps: list[Rep]) -> PatientIds:
    """CX repetitions -> identifiers without SSNs (duplicates by system|value dropped)."""
    seen: set[str] = set()
    out: list[tuple[Json, str, str]] = []
    for rep in reps:
        got = cx_identifier(rep)
        if got is None or is_ssn(*got):
            continue
        k = f"{got[0]['system']}|{got[0]['value']}"
        if k not in seen:
            seen.add(k)
            out.append(got)
    return PatientIds(tuple(out))


def pid_ids(pid: Seg) -> PatientIds:
    """Identifiers of PID-3 repetitions, then PID-2 and PID-4 (for 2.3-era feeds)."""
    return read_ids([*pid.reps(3), *pid.reps(2), *pid.reps(4)])


def patient_id(key: str) -> str:
    """Deterministic Patient.id: ``p-`` + first 16 hex of sha256(key)."""
    return "p-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _language(rep: Rep | None) -> Json | None:
    concept = cwe_concept(rep, "0296")
    if rep is None or concept is None:
        return None
    code = rep.c(1)
    bcp = _ISO639_2.get(code.upper()) or (code if _BCP47.match(code) else None)
    if bcp:
        coding: Json = {"system": "urn:ietf:bcp:47", "code": bcp}
        if rep.c(2):
            coding["display"] = rep.c(2)
        concept["coding"] = [coding]
    return concept


def pid_patient(pid: Seg) -> tuple[Json, str]:
    """PID -> (Patient resource, patient key).

    Raises ``LookupError`` when PID carries no usable (non-SSN) identifier.
    """
    ids = pid_ids(pid)
    key = ids.key(pid.ctx.settings.mrn_authority)
    if key is None:
        raise LookupError("PID-3 has no usable patient identifier")
    tz = pid.ctx.tz
    patient: Json = {"resourceType": "Patient", "id": patient_id(key)}
    patient["identifier"] = [i[0] for i in ids.items]
    names = [n for n in (xpn_name(r) for r in pid.reps(5)) if n]
    if names:
        patient["name"] = names
    telecom = [t for t in (xtn_contact(r, "home") for r in pid.reps(13)) if t]
    telecom += [t for t in (xtn_contact(r, "work") for r in pid.reps(14)) if t]
    if telecom:
        patient["telecom"] = telecom
    gender = GENDER.get(pid.v(8).upper())
    if gender:
        patient["gender"] = gender
    born = pid.v(7)
    birth = ts_fhir(born, tz)
    if birth:
        patient["birthDate"] = birth[:10]
        if len(birth) > 10:
            patient["_birthDate"] = {"extension": [{"url": BIRTH_TIME, "valueDateTime": birth}]}
    died = ts_fhir(pid.v(29), tz)
    if died:
        patient["deceasedDateTime"] = died
    elif pid.v(30).upper() in ("Y", "N"):
        patient["deceasedBoolean"] = pid.v(30).upper() == "Y"
    addresses = [a for a in (xad_address(r) for r in pid.reps(11)) if a]
    if addresses:
        patient["address"] = addresses
    lang = _language(pid.rep(15))
    if lang:
        patient["communication"] = [{"language": lang}]
    return patient, key

