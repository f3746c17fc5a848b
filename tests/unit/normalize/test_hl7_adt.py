"""ADT -> Encounter / Merge: every trigger in 2.3 (EVN-1, no MSH-9.3) and 2.5.1 (MSH-9.3 structures)."""
from __future__ import annotations

import pytest
from hl7_helpers import load, make_source, run

from middleware.normalize.hl7v2 import Hl7ContentError, normalize_hl7

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@pytest.mark.parametrize(
    ("name", "status", "cls"),
    [
        ("adt_a01_v23.hl7", "in-progress", "IMP"),
        ("adt_a02_v23.hl7", "in-progress", "IMP"),
        ("adt_a03_v23.hl7", "finished", "IMP"),
        ("adt_a04_v23.hl7", "planned", "AMB"),  # IG: A04 -> planned
        ("adt_a05_v23.hl7", "planned", "PRENC"),
        ("adt_a08_v23.hl7", "in-progress", "IMP"),  # PV1-2 I, no PV1-45
        ("adt_a11_v23.hl7", "cancelled", "IMP"),
        ("adt_a13_v23.hl7", "in-progress", "IMP"),  # PV1-45 still sent: not an end
        ("adt_a01_v251.hl7", "in-progress", "EMER"),
        ("adt_a02_v251.hl7", "in-progress", "IMP"),
        ("adt_a03_v251.hl7", "finished", "IMP"),
        ("adt_a04_v251.hl7", "planned", "AMB"),  # ADT^A04^ADT_A01: trigger from MSH-9.2
        ("adt_a05_v251.hl7", "planned", "PRENC"),
        ("adt_a08_v251.hl7", "finished", "IMP"),  # PV1-45 valued
        ("adt_a11_v251.hl7", "cancelled", "EMER"),
        ("adt_a13_v251.hl7", "in-progress", "IMP"),
        ("adt_a08_v28.hl7", "in-progress", "AMB"),
    ],
)
def test_status_and_class_per_trigger_and_version(name: str, status: str, cls: str) -> None:
    result = run(name)
    enc = result.resources[0]
    assert result.trigger_event == name[4:7].upper()
    assert enc["status"] == status
    assert enc["class"] == {"system": ACT, "code": cls, "display": enc["class"]["display"]}
    assert enc["subject"]["reference"] == f"Patient/{result.patient['id']}"  # type: ignore[index]
    assert enc["id"].startswith("e-")


def test_a01_v23_fields_and_dst_offsets() -> None:
    result = run("adt_a01_v23.hl7")
    enc = result.resources[0]
    assert result.version == "2.3" and result.control_id == "ADT23A01"
    assert result.occurred_at.isoformat() == "2024-03-10T01:32:00-05:00"  # EVN-2 in the source zone (EST)
    assert enc["identifier"][0]["value"] == "V0001"  # PV1-19
    assert enc["identifier"][0]["type"]["coding"][0]["code"] == "VN"
    assert enc["period"] == {"start": "2024-03-10T01:30:00-05:00"}  # PV1-44
    assert enc["type"][0]["coding"][0]["code"] == "E"  # PV1-4
    assert enc["hospitalization"]["admitSource"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0023", "code": "7"}
    assert enc["location"] == [{"location": {"display": "4W 401-A, HOSPA"}, "status": "active"}]  # PV1-3
    roles = [(p["type"][0]["coding"][0]["code"], p["individual"]["display"]) for p in enc["participant"]]
    assert roles == [("ATND", "DR ALICE ATTENDING MD"), ("REF", "DR BOB REFERRER"), ("ADM", "DR CAROL ADMITTER")]
    assert enc["serviceProvider"] == {"display": "HOSPA MAIN"}  # PV1-39
    # DG1 in 2.3: DG1-2 coding method names the system, DG1-4 is the text
    first, second = enc["contained"]
    assert first["id"] == "dg1-1" and first["code"]["coding"][0] == {
        "system": "http://hl7.org/fhir/sid/icd-10", "code": "R07.9"}  # I10: WHO ICD-10 (table 0396)
    assert first["code"]["text"] == "Chest pain, unspecified"
    assert enc["diagnosis"][0]["condition"] == {"reference": "#dg1-1"}
    assert enc["diagnosis"][0]["use"]["coding"][0]["code"] == "AD"  # DG1-6 A
    assert enc["diagnosis"][1]["use"]["coding"] == [{"system": "http://terminology.hl7.org/CodeSystem/v2-0052", "code": "W"}]
    assert enc["diagnosis"][1]["rank"] == 2  # DG1-15


def test_a03_v23_discharge_across_dst_and_disposition() -> None:
    enc = run("adt_a03_v23.hl7").resources[0]
    assert enc["period"] == {"start": "2024-03-10T01:30:00-05:00", "end": "2024-03-10T15:00:00-04:00"}
    assert enc["hospitalization"]["dischargeDisposition"] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0112", "code": "01"}]}  # PV1-36
    assert enc["location"][0]["status"] == "completed"
    assert run("adt_a01_v23.hl7").resources[0]["id"] == enc["id"]  # same visit number, same Encounter


def test_a03_v251_deceased_and_coded_diagnoses() -> None:
    result = run("adt_a03_v251.hl7")
    enc, patient = result.resources[0], result.patient
    assert patient["deceasedDateTime"] == "2024-11-04T06:15:00-05:00"  # type: ignore[index]  # PID-29
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "20"
    assert enc["period"]["start"] == "2024-11-03T01:30:00-04:00"  # fall-back night, first 01:30
    codes = [(c["code"]["coding"][0]["system"], c["code"]["coding"][0]["code"]) for c in enc["contained"]]
    assert codes == [("http://hl7.org/fhir/sid/icd-10", "J18.9"), ("http://snomed.info/sct", "233604007")]
    assert enc["diagnosis"][0]["rank"] == 1 and "rank" not in enc["diagnosis"][1]
    assert enc["diagnosis"][1]["use"]["coding"][0]["code"] == "F"


def test_a01_v251_evn2_offset_kept_and_msh4_provider() -> None:
    result = run("adt_a01_v251.hl7")
    assert result.occurred_at.isoformat() == "2024-11-03T01:32:00-04:00"
    enc = result.resources[0]
    assert enc["serviceProvider"] == {"display": "HOSPA"}  # MSH-4 when PV1-39 is empty
    assert enc["location"][0]["location"]["display"] == "ED BAY3-1 MAIN 1, HOSPA"
    assert enc["participant"][0]["individual"]["identifier"]["type"]["coding"][0]["code"] == "NPI"


def test_a02_prior_location() -> None:
    for name in ("adt_a02_v23.hl7", "adt_a02_v251.hl7"):
        locs = run(name).resources[0]["location"]
        assert [loc["status"] for loc in locs] == ["active", "completed"]  # PV1-3, PV1-6


def test_a08_keep_status_only_without_pv1_45() -> None:
    for name in ("adt_a08_v23.hl7", "adt_a08_v28.hl7"):
        result = run(name)
        assert result.keep_status == frozenset({result.resources[0]["id"]})
    assert run("adt_a08_v251.hl7").keep_status == frozenset()
    assert run("adt_a01_v23.hl7").keep_status == frozenset()


def test_a08_v23_trigger_from_evn1_when_msh9_2_is_empty() -> None:
    result = run("adt_a08_v23.hl7")
    assert result.message_type == "ADT^A08" and result.trigger_event == "A08"


def test_a13_drops_the_cancelled_discharge_time() -> None:
    enc = run("adt_a13_v23.hl7").resources[0]
    assert "end" not in enc["period"]


@pytest.mark.parametrize("name", ["adt_a40_v23.hl7", "adt_a40_v251.hl7"])
def test_a40_merge_keys_use_the_patient_key_rule(name: str) -> None:
    result = run(name)
    assert result.merge is not None
    assert result.merge.surviving_key == "urn:careloop:id:HOSPA|MRN000123"
    assert result.merge.retired_key == "urn:careloop:id:HOSPA|MRN000999"  # MR of HOSPA, not the SSN / PI
    assert result.resources == []


def test_a40_without_mrg_is_100() -> None:
    text = "\r".join(s for s in load("adt_a40_v251.hl7").split("\r") if not s.startswith("MRG"))
    with pytest.raises(Hl7ContentError) as err:
        normalize_hl7(text, make_source())
    assert (err.value.segment, err.value.code) == ("MRG", "100")


def test_missing_optional_segments_tolerated() -> None:
    text = "\r".join(s for s in load("adt_a01_v251.hl7").split("\r") if not s.startswith(("DG1", "EVN")))
    result = normalize_hl7(text, make_source())
    assert "diagnosis" not in result.resources[0]
    assert result.occurred_at.isoformat() == "2024-11-03T01:35:00-04:00"  # MSH-7 without EVN


def test_encounter_id_without_visit_number_uses_patient_key_and_admit_time() -> None:
    text = load("adt_a04_v23.hl7").replace("|V0002^^^HOSPA|", "||")
    a = normalize_hl7(text, make_source())
    b = normalize_hl7(text.replace("ADT23A04", "ADT23A04B"), make_source())
    assert a.resources[0]["id"] == b.resources[0]["id"] and a.warnings


def test_unsupported_message_type_is_200() -> None:
    text = load("adt_a01_v251.hl7").replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01")
    with pytest.raises(Hl7ContentError) as err:
        normalize_hl7(text, make_source())
    assert err.value.code == "200"
