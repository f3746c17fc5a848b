"""PID -> Patient and the patient key (MR of the configured authority, never an SSN)."""
from __future__ import annotations

from hl7_helpers import load, make_source, run

from middleware.normalize.hl7_patient import patient_id
from middleware.normalize.hl7v2 import normalize_hl7


def test_key_is_mr_of_configured_authority_not_first_repetition() -> None:
    result = run("siu_s12_v251.hl7")  # PID-3: PI, MR HOSPA, MR OTHERHOSP, SS
    assert result.patient_key == "urn:careloop:id:HOSPA|MRN000123"
    assert result.patient["id"] == patient_id(result.patient_key) and result.patient["id"].startswith("p-")  # type: ignore[index]
    other = normalize_hl7(load("siu_s12_v251.hl7"), make_source(mrn_authority="OTHERHOSP"))
    assert other.patient_key == "urn:careloop:id:OTHERHOSP|MRN900123"
    first_mr = normalize_hl7(load("siu_s12_v251.hl7"), make_source(mrn_authority=None))
    assert first_mr.patient_key == "urn:careloop:id:HOSPA|MRN000123"


def test_ssn_never_on_patient() -> None:
    for name in ("siu_s12_v23.hl7", "siu_s12_v251.hl7", "adt_a03_v251.hl7"):
        patient = run(name).patient
        values = [i["value"] for i in patient["identifier"]]  # type: ignore[index]
        assert "123-45-6789" not in values  # PID-3 SS repetition and PID-19 both dropped
        assert "123-45-6789" not in str(patient)


def test_key_falls_back_to_first_non_ssn_then_pid2() -> None:
    text = load("siu_s14_v23.hl7").replace("MRN000123^^^HOSPA^MR~123-45-6789^^^USSSA^SS", "123-45-6789^^^USSSA^SS~X77^^^CLINIC")
    assert normalize_hl7(text, make_source()).patient_key == "urn:careloop:id:CLINIC|X77"
    text = load("siu_s14_v23.hl7").replace("PID|1||MRN000123^^^HOSPA^MR~123-45-6789^^^USSSA^SS|", "PID|1|OLD42^^^HOSPA||")
    assert normalize_hl7(text, make_source()).patient_key == "urn:careloop:id:HOSPA|OLD42"


def test_v23_patient_fields() -> None:
    patient = run("siu_s12_v23.hl7").patient
    assert patient is not None
    assert [n.get("use") for n in patient["name"]] == ["official", "nickname"]  # PID-5 repeats
    assert patient["name"][0] == {"use": "official", "family": "TESTPATIENT", "given": ["ALPHA", "Q"]}
    assert patient["birthDate"] == "1980-02-15" and patient["gender"] == "female"
    # 2.3 XTN: the number in component 1; PID-13 home (repeating), PID-14 work
    assert [(t["value"], t["use"]) for t in patient["telecom"]] == [
        ("(555)555-0101", "home"), ("(555)555-0103", "home"), ("(555)555-0102X12", "work")]
    assert patient["address"][0]["line"] == ["100 MAIN ST", "APT 2"]
    assert patient["communication"][0]["language"]["coding"][0] == {"system": "urn:ietf:bcp:47", "code": "en"}
    assert "deceasedBoolean" not in patient and "deceasedDateTime" not in patient


def test_v251_patient_fields() -> None:
    patient = run("siu_s12_v251.hl7").patient
    assert patient is not None
    phone, email, work = patient["telecom"]
    assert phone["value"] == "+1 (555) 5550101" and phone["use"] == "home"  # XTN-5/6/7
    assert email == {"system": "email", "value": "alpha@example.test", "use": "home"}  # XTN-4
    assert work["use"] == "work" and work["value"].endswith("x12")
    assert patient["address"][1]["type"] == "postal"
    assert patient["deceasedBoolean"] is False  # PID-30 N
    assert patient["communication"][0]["language"]["coding"][0]["code"] == "en"


def test_v28_cell_phone_xtn12() -> None:
    patient = run("adt_a08_v28.hl7").patient
    assert patient is not None and patient["telecom"] == [{"system": "phone", "value": "5550111", "use": "mobile"}]
    assert patient["gender"] == "male"


def test_gender_table_0001() -> None:
    base = load("siu_s14_v23.hl7")
    for v2, fhir in (("M", "male"), ("F", "female"), ("O", "other"), ("A", "other"), ("U", "unknown")):
        p = normalize_hl7(base.replace("|19800215|F|", f"|19800215|{v2}|"), make_source()).patient
        assert p is not None and p["gender"] == fhir


def test_z_segment_and_bare_backslashes_tolerated() -> None:
    result = run("siu_s12_v23.hl7")  # ends with ZSC|EPIC\custom|not\an\escape
    assert result.resources[0]["status"] == "booked"
    assert run("adt_a01_v23.hl7").resources[0]["status"] == "in-progress"  # trailing ZPI


def test_birth_time_extension() -> None:
    text = load("siu_s14_v23.hl7").replace("|19800215|F|", "|198002150830|F|")
    p = normalize_hl7(text, make_source()).patient
    assert p is not None and p["birthDate"] == "1980-02-15"
    assert p["_birthDate"]["extension"][0]["valueDateTime"] == "1980-02-15T08:30:00-05:00"


def test_package_samples_normalize_in_demo_order() -> None:
    from hl7_helpers import validate_all

    from middleware.normalize.hl7_peek import decode
    from middleware.samples import sample_paths

    paths = sample_paths()
    assert [p.name[:2] for p in paths] == ["01", "02", "03", "04", "05"]
    results = [normalize_hl7(decode(p.read_bytes())[0], make_source()) for p in paths]
    for r in results:
        validate_all(r)
    assert [r.resources[0]["status"] for r in results] == ["booked", "noshow", "in-progress", "finished", "cancelled"]
    assert results[0].resources[0]["id"] != results[1].resources[0]["id"]  # a new booking; an earlier visit missed
    assert results[2].resources[0]["id"] == results[3].resources[0]["id"]  # same encounter
    assert len({r.patient_key for r in results}) == 3
