"""Policy-aware payloads: what each payload field becomes at each destination, said at validation.

For every payload field of a rule and every destination it emits to, validation runs the
destination's policy (``middleware.config.policy.project``, the code the delivery worker
uses) on a sample value of the field's FHIR type and says:

* **warning ``payload-stripped``** — the policy will strip the field (not in ``policy.allow``,
  a ``thin`` destination, or the coded/identifying parts of an allowed object);
* **warning ``payload-sensitive``** — the field carries an identifier, a name, a birth date or a
  diagnosis/procedure code (by its FHIR type, its path or its name) and the policy *allows* it:
  the warning names the policy line in ``destinations.yaml`` that lets it out;
* **info ``dates-of-service``** — dates of service (appointment start, discharge date, due
  dates: dateTime/instant/date/Period fields other than birth dates) allowed to a BAA
  destination: PHI, but the minimum necessary for a reminder or follow-up, so not a warning.

Payload fields listed in ``emit.internal`` are kept on the trigger (``%payload`` in cancellation
conditions) and never meant to leave: policies strip them (deny by default) without a warning;
a policy that allows one is an error.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config.destinations import Destination
from ..config.yamlpos import Diagnostic, DiagnosticSink, position_of
from ..config.policy import project
from .check import TypeContext

#: field-name words that say what a field carries
_NAME_WORDS = {
    "an identifier": {"mrn", "ssn", "identifier", "identifiers", "patient_id", "patientid", "member_id", "mbi", "npi"},
    "a name": {"name", "names", "family", "given", "firstname", "lastname", "first_name", "last_name", "patient_name"},
    "a birth date": {"dob", "birthdate", "birth_date", "birthday"},
    "a diagnosis or procedure code": {"diagnosis", "diagnoses", "dx", "icd", "icd10", "cpt", "hcpcs", "procedure",
                                      "procedures", "snomed", "loinc", "code", "codes"},
}
_DATE_TYPES = frozenset({"date", "dateTime", "instant", "Period", "System.Date", "System.DateTime"})
_IDENT = re.compile(r"[A-Za-z_]\w*")
_FUNCS = frozenset({"first", "last", "single", "distinct", "exists", "empty", "where", "select", "memberOf", "iif",
                    "plusDays", "plusBusinessDays", "localDate", "toString", "join", "count"})


@dataclass(frozen=True)
class FieldKind:
    category: str | None  # one of _NAME_WORDS' keys, or None
    date: bool
    sample: Any


def classify(field: str, expr: str, types: TypeContext) -> FieldKind:
    """What a payload field carries, from its FHIR result type, its element path and its name."""
    text = expr.strip()
    if text.startswith("'") and text.endswith("'"):
        return FieldKind(None, False, text.strip("'"))
    ty = types.type_of(expr) or frozenset()
    words = [w for w in _IDENT.findall(re.sub(r"'[^']*'", "", expr)) if w not in _FUNCS]
    last = words[-1] if words else ""
    tokens = set(re.split(r"[^a-z0-9]+", field.lower())) | {field.lower()}
    category = None
    if "Identifier" in ty or last == "identifier":
        category = "an identifier"
    elif "HumanName" in ty or last == "name" or (last in ("family", "given") and "name" in words):
        category = "a name"
    elif last == "birthDate":
        category = "a birth date"
    elif ty & {"Coding", "CodeableConcept"} or last in ("code", "coding") or (
            any(w in ("diagnoses", "diagnosis", "reasonCode", "procedure") for w in words) and last not in ("exists", "count")):
        category = "a diagnosis or procedure code"
    else:
        for cat, names in _NAME_WORDS.items():
            if tokens & names:
                category = cat
                break
    date = category is None and bool(ty) and ty <= _DATE_TYPES
    return FieldKind(category, date, _sample(ty))


def _sample(ty: frozenset[str]) -> Any:
    """A value of the type, shaped as FHIR data is (so ``project`` treats it as it would real data)."""
    if "CodeableConcept" in ty:
        return {"coding": [{"system": "http://example.org/cs", "code": "X1", "display": "x"}], "text": "x"}
    if "Coding" in ty:
        return {"system": "http://example.org/cs", "code": "X1", "display": "x"}
    if "Identifier" in ty:
        return {"system": "http://example.org/id", "value": "V1"}
    if "HumanName" in ty:
        return {"family": "F", "given": ["G"]}
    if "Reference" in ty:
        return {"reference": "Location/x", "display": "x"}
    if "Period" in ty:
        return {"start": "2024-01-01T09:00:00-05:00", "end": "2024-01-01T10:00:00-05:00"}
    if "Address" in ty:
        return {"line": ["1 Main St"], "city": "x", "postalCode": "00000"}
    return "text"


def policy_positions(raw: Any) -> dict[str, dict[str, tuple[int, int]]]:
    """destination name -> {"": policy line, "mode": ..., <allowed field>: its line in ``allow``}."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    items = raw.get("destinations") if isinstance(raw, dict) else None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or "name" not in item:
            continue
        pos: dict[str, tuple[int, int]] = {"": position_of(item, "policy" if "policy" in item else "name")}
        pol = item.get("policy")
        if isinstance(pol, dict):
            if "mode" in pol:
                pos["mode"] = position_of(pol, "mode")
            allow = pol.get("allow")
            if isinstance(allow, list):
                for j, a in enumerate(allow):
                    pos[f"allow:{a}"] = position_of(allow, j)
        out[str(item["name"])] = pos
    return out


def check_payload(sink: DiagnosticSink, emit_node: Any, rule_id: str, payload: dict[str, str], dests: list[Destination],
                  types: TypeContext, dest_path: str, positions: dict[str, dict[str, tuple[int, int]]],
                  internal: list[str] | None = None) -> None:
    """Append payload-vs-policy warnings and information for one rule (see the module docstring)."""
    pnode = emit_node.get("payload", emit_node) if isinstance(emit_node, dict) else emit_node
    hidden = set(internal or ())
    for i, k in enumerate(internal or []):
        if k not in payload:
            inode = emit_node.get("internal") if isinstance(emit_node, dict) else None
            sink.error(inode if isinstance(inode, list) else emit_node, i if isinstance(inode, list) else "internal",
                       "unknown-field", f"emit.internal: '{k}' is not a payload field")
    fields = {k: classify(k, v, types) for k, v in payload.items() if k not in hidden}
    for d in dests:
        pos = positions.get(d.name, {})

        def where(key: str, pos: dict[str, tuple[int, int]] = pos) -> str:
            line, col = pos.get(key) or pos.get("", (1, 1))
            return f"{dest_path}:{line}:{col}"

        for k in sorted(hidden & set(payload)):
            if d.policy.mode != "thin" and k in d.policy.allow:
                sink.error(pnode, k, "internal-allowed", f"payload.{k} is internal (emit.internal) but destination "
                           f"'{d.name}' allows it at {where('allow:' + k)}: remove it there or from internal")

        sample = {k: f.sample for k, f in fields.items()}
        proj = project(sample, d.policy)
        dates: list[str] = []
        for k, f in fields.items():
            stripped = [p for p in proj.stripped if p == k or p.startswith(k + ".")]
            what = f" ({f.category})" if f.category else ""
            if d.policy.mode == "thin":
                sink.warning(pnode, k, "payload-stripped", f"payload.{k}{what}: destination '{d.name}' is thin "
                             f"(policy at {where('mode')}): it receives only a link, never this field")
            elif k in stripped:
                sink.warning(pnode, k, "payload-stripped", f"payload.{k}{what}: destination '{d.name}' will strip it: "
                             f"not in its policy.allow ({where('')}); add it there, drop it, or list it in "
                             "emit.internal if only conditions use it")
            elif stripped:
                parts = ", ".join(sorted(p[len(k) + 1:] for p in stripped))
                sink.warning(pnode, k, "payload-stripped", f"payload.{k}{what}: destination '{d.name}' will strip "
                             f"parts of it ({parts}): naming a container is not naming its codes ({where('allow:' + k)})")
            elif f.category:
                sink.warning(pnode, k, "payload-sensitive", f"payload.{k} carries {f.category} to '{d.name}': allowed by "
                             f"its policy at {where('allow:' + k)}; minimum necessary: send a pseudonymous contact key "
                             "and non-clinical wording instead")
            elif f.date and d.baa:
                dates.append(k)
        if dates:
            line, col = position_of(emit_node, "payload") if isinstance(emit_node, dict) else (1, 1)
            shown = ", ".join(f"{k} (allowed at {where('allow:' + k)})" for k in dates)
            sink.items.append(Diagnostic(sink.path, line, col, "info", "dates-of-service",
                                         f"rule '{rule_id}' sends dates of service to '{d.name}', a BAA destination: {shown}; "
                                         "PHI, and the minimum necessary for the contact"))
