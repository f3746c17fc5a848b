"""HL7 v2 coding-system names (table 0396) -> canonical code system URIs, overridable per source."""
from __future__ import annotations

from pathlib import Path

import pytest

from middleware.config.sources import Hl7Settings, load_sources
from middleware.normalize.hl7_types import coding_system

REPO = Path(__file__).resolve().parents[3]
DEFAULT = Hl7Settings()


@pytest.mark.parametrize("name, uri", [
    ("CPT", "http://www.ama-assn.org/go/cpt"),
    ("C4", "http://www.ama-assn.org/go/cpt"),
    ("HCPCS", "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"),
    ("I10", "http://hl7.org/fhir/sid/icd-10"),          # WHO ICD-10
    ("I10C", "http://hl7.org/fhir/sid/icd-10-cm"),      # ICD-10-CM
    ("i10c", "http://hl7.org/fhir/sid/icd-10-cm"),      # names are case-insensitive
    ("I10P", "http://www.cms.gov/Medicare/Coding/ICD10"),
    ("SCT", "http://snomed.info/sct"),
    ("LN", "http://loinc.org"),
    ("HL70112", "http://terminology.hl7.org/CodeSystem/v2-0112"),
    ("HL70203", "http://terminology.hl7.org/CodeSystem/v2-0203"),
    ("http://example.org/cs", "http://example.org/cs"),   # already a URI
    ("99LOC", "urn:careloop:cs:99LOC"),                   # local: no canonical URI
])
def test_table_0396_names(name, uri):
    assert coding_system(name, DEFAULT) == uri


def test_no_careloop_identifier_namespace_for_code_systems():
    for name in ("HCPCS", "CPT", "I10", "L", "LOCAL"):
        assert not str(coding_system(name, DEFAULT)).startswith("urn:careloop:id:")


def test_empty_name_takes_the_bound_table():
    assert coding_system("", DEFAULT, "0112") == "http://terminology.hl7.org/CodeSystem/v2-0112"
    assert coding_system("", DEFAULT) is None


def test_per_source_override_wins():
    us = Hl7Settings(coding_systems={"I10": "http://hl7.org/fhir/sid/icd-10-cm", "LOCAL": "urn:oid:1.2.3"})
    assert coding_system("I10", us) == "http://hl7.org/fhir/sid/icd-10-cm"
    assert coding_system("local", us) == "urn:oid:1.2.3"
    assert coding_system("I10C", us) == "http://hl7.org/fhir/sid/icd-10-cm"
    assert coding_system("CPT", us) == "http://www.ama-assn.org/go/cpt"


def test_override_must_be_a_uri(tmp_path):
    (tmp_path / "sources.yaml").write_text(
        "sources:\n  - name: default\n    hl7:\n      coding_systems: {I10: icd-10-cm}\n")
    _, diags = load_sources(tmp_path)
    assert diags and "is not a code system URI" in diags[0].message and diags[0].line == 4


def test_shipped_default_source_reads_i10_as_icd10cm():
    sources, diags = load_sources(REPO / "mappings")
    assert not diags
    assert coding_system("I10", sources.by_name["default"].hl7) == "http://hl7.org/fhir/sid/icd-10-cm"


def test_value_set_matches_shift_without_the_i10_override(tmp_path, capsys):
    """The upgrade note's point: an I10 sender's ICD-10-CM codes match ICD-10-CM value sets only through the override."""
    import shutil

    from middleware.cli import main

    dst = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", dst)
    assert main(["mappings", "test", str(dst), "-k", "no follow-up booked"]) == 0
    src = dst / "sources.yaml"
    src.write_text("\n".join(x for x in src.read_text().splitlines()
                             if "coding_systems:" not in x and "I10: http" not in x) + "\n")
    capsys.readouterr()
    assert main(["mappings", "test", str(dst), "-k", "no follow-up booked"]) == 1
    assert "fuh-followup-7d" in capsys.readouterr().out
