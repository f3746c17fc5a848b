"""The direct evaluator for plain member paths (with ``where(name = 'text')`` filters,
``memberOf`` and ``and``) must give what fhirpathpy gives, on every expression of the shipped
mappings that it takes, over resources mapped from every HL7 fixture and the FHIR samples
(and hand-made edge cases: values that are not text, repeated, missing, date-like)."""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
import yaml

from middleware.normalize.hl7_peek import decode
from middleware.normalize.hl7v2 import normalize_hl7
from fhirpathpy.parser import parse as fhirpath_parse

from middleware.rules.fhirpath import R4, ValueSets, _ast, _compile, compile_expr, parse_tree, plain_path
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


@cache
def _resources() -> list[dict[str, Any]]:
    rs, _ = load_ruleset(REPO / "mappings")
    assert rs is not None
    source = rs.sources.by_name["default"]
    out: list[dict[str, Any]] = []
    for f in sorted((REPO / "tests/fixtures/hl7").glob("*.hl7")):
        text, _, _ = decode(f.read_bytes(), "cp1252")
        try:
            norm = normalize_hl7(text, source)
        except Exception:
            continue
        out += norm.resources + ([norm.patient] if norm.patient else [])
    out += [
        {"resourceType": "Observation", "valueString": "x", "status": "final"},
        {"resourceType": "Appointment", "start": "2031-01-01T10:00:00Z", "serviceType": [{"coding": [{"display": None}, {"display": "A"}]}]},
        {"resourceType": "Appointment", "participant": []},
        {"resourceType": "Appointment", "start": "2030-01-01T10:00:00Z", "participant": [
            {"actor": {"type": "Location", "display": "Clinic A"}}, {"actor": {"type": "Practitioner", "display": "Dr"}},
            {"actor": {"type": "Location", "display": "B"}}]},
        {"resourceType": "Appointment", "participant": [{"actor": {"display": "x"}}, {"status": "accepted", "actor": {"type": "Location"}},
                                                        {}, {"actor": {"type": "location", "display": "y"}}]},
        {"resourceType": "Appointment", "participant": [{"actor": {"type": ["Location"], "display": "L"}}]},
        {"resourceType": "Appointment", "participant": [{"actor": {"type": 5, "display": "Room 1"}}]},
        {"resourceType": "Appointment", "participant": [{"actor": {"type": "2030-01-01", "display": "Room 1"}}]},
        {"resourceType": "Appointment", "participant": [{"actor": [{"type": "Location", "display": "a"}, {"type": "Location"}]}]},
        {"resourceType": "Appointment", "start": "2030", "serviceType": [{"coding": [{"system": "s", "code": "45378"}]}]},
        {"resourceType": "Appointment", "serviceType": [{"coding": [{"system": "s", "code": "45378"}]}]},
        {"resourceType": "Appointment", "start": "2030", "end": "2031",
         "serviceType": [{"coding": [{"system": "s", "code": "1"}]}, {"coding": [{"code": "G0105"}]}]},
        {"resourceType": "Appointment", "start": "2030", "serviceType": [{"text": "x"}]},
        {"resourceType": "Appointment", "start": "2030", "serviceType": []},
        {"resourceType": "Patient", "start": "2030"},
    ]
    return out


EXPRESSIONS = sorted({s for f in sorted((REPO / "mappings/rules").glob("*.yaml")) if not f.name.endswith("_test.yaml")
                      for s in _strings(yaml.safe_load(f.read_text())) if plain_path(s) is not None}
                     | {"Observation.value", "value.exists()", "Encounter.status", "subject.reference.first()",
                        "participant.actor.where(type = 'Location')", "participant.where(status = 'accepted').actor.display",
                        "Appointment.participant.actor.where(display = 'Room 1').type.first()",
                        "start.exists() and serviceType.memberOf('colonoscopy')", "start.exists() and end.exists()",
                        "serviceType.coding.memberOf('colonoscopy') and start.exists() and end.exists()"})
VALUESETS = ValueSets({"colonoscopy": {"45378", "|G0105"}})


def test_the_shipped_rules_use_plain_paths() -> None:
    assert "start" in EXPRESSIONS and "serviceType.coding.display.first()" in EXPRESSIONS
    assert "participant.actor.where(type = 'Location').display.first()" in EXPRESSIONS
    assert "serviceType.memberOf('colonoscopy') and start.exists()" in EXPRESSIONS
    assert plain_path("%patient.name.given") is None and plain_path("true") is None
    assert plain_path("a.where(b = 'x' or c = 'y')") is None and plain_path("a.where(b = '2020')") is None
    assert plain_path("a.memberOf('x and y')") is None and plain_path("start.exists() or end.exists()") is None
    assert plain_path("start and end.exists()") is None


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_plain_path_equals_fhirpathpy(expr: str) -> None:
    fast, slow = compile_expr(expr, VALUESETS), _compile(expr, VALUESETS, None, "UTC")
    for res in _resources():
        assert fast(res, {}) == slow(res, {}), (expr, res)


def test_memberof_is_the_valueset_extension() -> None:
    """Without the extension table fhirpathpy rejects memberOf: the comparison above runs the real one."""
    with pytest.raises(Exception):  # noqa: B017 (fhirpathpy raises a bare Exception)
        fhirpathpy.compile("serviceType.memberOf('colonoscopy')", R4)({"resourceType": "Appointment"}, {})


ALL_EXPRESSIONS = sorted({s for f in sorted((REPO / "mappings").rglob("*.yaml")) for s in _strings(yaml.safe_load(f.read_text()))
                          if not parse_tree(s)[1]})


def test_one_parse_per_expression_gives_fhirpathpys_syntax_tree() -> None:
    """``compile_expr`` builds fhirpathpy's tree from the syntax check's ANTLR parse (``_ast``) instead
    of parsing again: the trees must be fhirpathpy's own, for every string of the shipped mappings that
    parses (most are FHIRPath; the rest parse as plain identifiers or literals, which is as good a check)."""
    assert len(ALL_EXPRESSIONS) > 50
    for expr in ALL_EXPRESSIONS:
        assert _ast(expr) == fhirpath_parse(expr), expr
    assert _ast("name.where(") is None  # a syntax problem: fhirpathpy parses (and reports) as before
