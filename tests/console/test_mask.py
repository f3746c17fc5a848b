"""Masking: identifying HL7 segments and FHIR person elements hidden, shape kept."""
from __future__ import annotations

from middleware.console.mask import MASK, mask_fhir, mask_hl7


def test_hl7_identifying_segments_are_masked_shape_kept() -> None:
    msg = ("MSH|^~\\&|EHR|HOSP|CL|CL|20260101120000||SIU^S12|C1|P|2.5.1\r"
           "PID|1||MRN123^^^HOSP^MR||DOE^JANE||19800101|F|||1 MAIN ST^^TOWN\r"
           "NK1|1|DOE^JOHN|SPO\r"
           "PV1|1|O|CLINIC^1^A\r")
    out = mask_hl7(msg).split("\r")
    assert out[0].startswith("MSH|^~\\&|EHR")
    assert out[1] == f"PID|1||{MASK}||{MASK}||{MASK}|{MASK}|||{MASK}"
    assert out[2] == f"NK1|1|{MASK}|{MASK}"
    assert out[3] == "PV1|1|O|CLINIC^1^A"
    assert "DOE" not in mask_hl7(msg) and "MRN123" not in mask_hl7(msg) and "19800101" not in mask_hl7(msg)


def test_fhir_patient_and_reference_displays_are_masked() -> None:
    bundle = {"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe"}], "birthDate": "1980-01-01",
                      "gender": "female", "identifier": [{"value": "MRN123"}]}},
        {"resource": {"resourceType": "Appointment", "status": "booked",
                      "participant": [{"actor": {"reference": "Patient/p1", "display": "Jane Doe"}}]}},
    ]}
    out = mask_fhir(bundle)
    patient, appt = out["entry"][0]["resource"], out["entry"][1]["resource"]
    assert patient["name"] == MASK and patient["birthDate"] == MASK and patient["identifier"] == MASK
    assert patient["gender"] == "female" and patient["id"] == "p1"
    assert appt["participant"][0]["actor"] == {"reference": "Patient/p1", "display": MASK}
    assert bundle["entry"][0]["resource"]["name"] == [{"family": "Doe"}]  # the input is not changed
