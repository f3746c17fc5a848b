"""Shared helpers for the HL7 v2 normalizer tests: fixtures, source, R4B validation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient

from middleware.config.sources import Hl7Settings, Source
from middleware.model import Normalized
from middleware.normalize.hl7_peek import decode
from middleware.normalize.hl7v2 import normalize_hl7

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hl7"
MODELS = {"Appointment": Appointment, "Encounter": Encounter, "Patient": Patient}


def make_source(**hl7: Any) -> Source:
    settings = {"timezone": "America/New_York", "mrn_authority": "HOSPA"}
    settings.update(hl7)
    return Source(name="test-feed", hl7=Hl7Settings(**settings))



def load(name: str) -> str:
    text, _, problems = decode((FIXTURES / name).read_bytes())
    assert not problems
    return text


def validate_all(result: Normalized) -> None:
    """Every produced resource must parse with its fhir.resources R4B model."""
    for res in [result.patient, *result.resources]:
        if res is not None:
            MODELS[res["resourceType"]].model_validate(res)


def run(name: str, source: Source | None = None) -> Normalized:
    result = normalize_hl7(load(name), source or make_source())
    validate_all(result)
    return result
