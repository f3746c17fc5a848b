"""The direct evaluator for plain member paths must give what fhirpathpy gives, on every
expression of the shipped mappings that it takes, over resources mapped from every HL7
fixture and the FHIR samples (and a few hand-made edge cases)."""
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

from middleware.rules.fhirpath import R4, _ast, compile_expr, parse_tree, plain_path
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
    ]
    return out


EXPRESSIONS = sorted({s for f in sorted((REPO / "mappings/rules").glob("*.yaml")) if not f.name.endswith("_test.yaml")
                      for s in _strings(yaml.safe_load(f.read_text())) if plain_path(s) is not None}
                     | {"Observation.value", "value.exists()", "Encounter.status", "subject.reference.first()"})


def test_the_shipped_rules_use_plain_paths() -> None:
    assert "start" in EXPRESSIONS and "serviceType.coding.display.first()" in EXPRESSIONS
    assert plain_path("participant.actor.where(type = 'Location').display.first()") is None
    assert plain_path("%patient.name.given") is None and plain_path("true") is None


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_plain_path_equals_fhirpathpy(expr: str) -> None:
    fast, slow = compile_expr(expr), fhirpathpy.compile(expr, R4)
    for res in _resources():
        assert fast(res, {}) == slow(res, {}), (expr, res.get("resourceType"))


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
