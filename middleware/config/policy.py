"""Minimum-necessary projection (pure): what one destination may receive.

Contract of :func:`project`:

* **Deny by default.** A payload field leaves only when the destination's
  ``policy.allow`` names it. Dotted paths reach into nested objects
  (``appointment.start``); a path crosses lists transparently
  (``items.status`` keeps ``status`` of every element).
* **Naming a container is not naming its codes.** Inside an allowed object, any
  key or value that looks like a coded clinical concept, an identifier, a note or
  direct contact/demographic data is stripped unless the allow-list names that
  exact path. Examples: a FHIR ``Coding``/``CodeableConcept``/``Identifier``/
  ``HumanName``/``ContactPoint``/``Address``/``Reference``; keys such as ``code``,
  ``identifier``, ``mrn``, ``ssn``, ``note``, ``birthDate``; string values shaped
  like an SSN, an ICD-10/CPT/SNOMED/LOINC/NDC code, an MRN-like token, a phone
  number or an e-mail address. A top-level allowed *leaf* (``appointment_service``)
  is an exact name and is kept as is.
* ``thin`` mode sends no payload at all: only the pseudonymous contact key, the
  trigger name, the time and a link back (``link`` is added by the worker).
* Patients are identified by a keyed HMAC of their key unless the policy says
  ``identifiers: mrn``.

    out = project({"appointment_start": "...", "mrn": "MRN1"}, Policy(allow=["appointment_start"]))
    out.payload == {"appointment_start": "..."}; out.fields == ["appointment_start"]
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any

from .destinations import Policy

#: Keys whose values are identifiers, codes, notes or direct demographics.
SENSITIVE_KEYS = frozenset(k.lower() for k in (
    "identifier", "identifiers", "mrn", "ssn", "social", "patient_key", "patientkey", "patient_id", "patientid",
    "code", "coding", "codes", "system", "diagnosis", "diagnoses", "dx", "icd", "icd10", "cpt", "snomed", "loinc",
    "procedure", "procedures", "medication", "medications", "medicationcodeableconcept", "problem", "problems",
    "condition", "conditions", "reasoncode", "reasonreference", "note", "notes", "comment", "comments", "text",
    "name", "names", "family", "given", "prefix", "suffix", "birthdate", "dob", "birth_date", "deceased",
    "deceaseddatetime", "telecom", "phone", "mobile", "email", "fax", "address", "line", "postalcode", "zip",
    "reference", "contained", "extension", "modifierextension", "photo", "account", "accountnumber",
))

_VALUE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ssn", re.compile(r"^\d{3}-?\d{2}-?\d{4}$")),
    ("icd10", re.compile(r"^[A-TV-Z]\d{2}(\.[0-9A-Z]{1,4})?$")),
    ("cpt/hcpcs", re.compile(r"^(\d{4}[0-9FTU]|[A-V]\d{4})$")),
    ("numeric code or identifier", re.compile(r"^\d{6,}$")),
    ("loinc", re.compile(r"^\d{1,7}-\d$")),
    ("ndc", re.compile(r"^\d{4,5}-\d{3,4}-\d{1,2}$")),
    ("mrn-like", re.compile(r"^(?=.*\d)[A-Z]{1,8}[-_]?\d{3,}[A-Z0-9]*$", re.IGNORECASE)),
    ("phone", re.compile(r"^\+?1?[\s.(-]*\d{3}[\s.)-]*\d{3}[\s.-]*\d{4}$")),
    ("email", re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")),
    ("hl7 component string", re.compile(r"\^")),
)


def looks_sensitive_value(value: Any) -> str | None:
    """Why a scalar looks like a code, identifier or contact datum, or ``None``; pure."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return None
    v = value.strip()
    for label, pat in _VALUE_PATTERNS:
        if pat.search(v) if label == "hl7 component string" else pat.match(v):
            return label
    return None


def looks_like_fhir_datatype(obj: dict[str, Any]) -> str | None:
    """The FHIR datatype a dict resembles when that datatype carries codes or identity, else None."""
    keys = set(obj)
    if "coding" in keys:
        return "CodeableConcept"
    if "code" in keys and ("system" in keys or "display" in keys):
        return "Coding"
    if "value" in keys and "system" in keys:
        return "Identifier/ContactPoint"
    if keys & {"family", "given"}:
        return "HumanName"
    if keys & {"line", "postalCode", "city"} and keys & {"line", "postalCode", "state", "country", "city"}:
        return "Address"
    if "reference" in keys:
        return "Reference"
    if "resourceType" in keys:
        return "Resource"
    return None


@dataclass(frozen=True)
class Projection:
    """What a destination receives: the payload, the dotted paths kept, and what was stripped (paths only)."""

    payload: dict[str, Any]
    fields: list[str]
    stripped: list[str] = field(default_factory=list)


class _Scrubber:
    def __init__(self, allow: set[str]) -> None:
        self.allow = allow
        self.through = {".".join(p.split(".")[:i]) for p in allow for i in range(1, p.count(".") + 1)}
        self.stripped: list[str] = []
        self.kept: set[str] = set()

    def named(self, path: str) -> bool:
        return path in self.allow

    def scrub(self, value: Any, path: str) -> tuple[bool, Any]:
        """(keep, cleaned value) for ``value`` found at dotted ``path``."""
        if isinstance(value, dict):
            kind = looks_like_fhir_datatype(value)
            if kind and not self.named(path) and path not in self.through:
                self.stripped.append(path)
                return False, None
            out: dict[str, Any] = {}
            for k, v in value.items():
                child = f"{path}.{k}"
                if not (self.named(child) or child in self.through) and str(k).lower() in SENSITIVE_KEYS:
                    self.stripped.append(child)
                    continue
                ok, cleaned = self.scrub(v, child)
                if ok:
                    out[k] = cleaned
            return (bool(out), out)
        if isinstance(value, list):
            items = [c for ok, c in (self.scrub(v, path) for v in value) if ok]
            return (bool(items) or not value, items)
        if not self.named(path) and looks_sensitive_value(value):
            self.stripped.append(path)
            return False, None
        self.kept.add(path)
        return True, value


def project(payload: dict[str, Any], policy: Policy) -> Projection:
    """Apply ``policy`` to a trigger payload; pure (see the module docstring)."""
    if policy.mode == "thin":
        return Projection({}, [], sorted(payload))
    allow = {a for a in policy.allow if a not in ("contact_key", "trigger", "occurred_at")}
    sc = _Scrubber(allow)

    def covered(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in allow for i in range(1, len(parts) + 1))

    def keep(value: Any, path: str) -> tuple[bool, Any]:
        if covered(path):
            return sc.scrub(value, path)
        if path not in sc.through:
            sc.stripped.append(path)
            return False, None
        if isinstance(value, dict):
            out = {k: c for k, (ok, c) in ((k, keep(v, f"{path}.{k}")) for k, v in value.items()) if ok}
            return bool(out), out
        if isinstance(value, list):
            items = [c for ok, c in (keep(v, path) for v in value) if ok]
            return bool(items), items
        return False, None

    out: dict[str, Any] = {}
    for k, v in payload.items():
        ok, cleaned = keep(v, str(k))
        if ok:
            out[k] = cleaned
    return Projection(out, sorted(sc.kept), sorted(set(sc.stripped)))


def outgoing(payload: dict[str, Any], policy: Policy, link: str) -> Projection:
    """The payload a destination receives for one trigger: :func:`project`, or in ``thin``
    mode only ``link`` (the worker and ``careloop explain`` both call this; pure)."""
    proj = project(payload, policy)
    if policy.mode == "thin":
        return Projection({"link": link}, ["link"], proj.stripped)
    return proj


def contact_key(secret: str, patient_key: str | None) -> str:
    """Pseudonymous, stable per patient and secret; not reversible without the secret."""
    if not patient_key:
        return ""
    mac = hmac.new(secret.encode(), patient_key.encode(), hashlib.sha256).hexdigest()
    return "ck_" + mac[:40]


def identifier_for(policy: Policy, secret: str, patient_key: str | None) -> str:
    """The contact key a destination receives: HMAC by default, the MRN only if ``identifiers: mrn``."""
    if policy.identifiers == "mrn" and patient_key:
        return patient_key.split("|", 1)[-1]
    return contact_key(secret, patient_key)
