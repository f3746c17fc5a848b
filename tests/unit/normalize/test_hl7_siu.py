"""SIU -> Appointment: every trigger in 2.3 (no MSH-9.3, SCH-11 TQ) and 2.5.1 (MSH-9.3, TQ1)."""
from __future__ import annotations

import pytest

from middleware.normalize.hl7v2 import Hl7ContentError, normalize_hl7

from hl7_helpers import load, make_source, run

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("siu_s12_v23.hl7", "booked"),  # SCH-25 Booked
        ("siu_s13_v23.hl7", "booked"),
        ("siu_s14_v23.hl7", "booked"),
        ("siu_s15_v23.hl7", "cancelled"),  # trigger decides
        ("siu_s16_v23.hl7", "cancelled"),  # trigger decides although SCH-25 says Booked
        ("siu_s17_v23.hl7", "entered-in-error"),
        ("siu_s26_v23.hl7", "noshow"),  # trigger decides although SCH-25 says Booked
        ("siu_s12_v251.hl7", "booked"),
        ("siu_s13_v251.hl7", "booked"),
        ("siu_s14_v251.hl7", "checked-in"),  # SCH-25 Started
        ("siu_s15_v251.hl7", "cancelled"),
        ("siu_s16_v251.hl7", "cancelled"),  # SCH-25 Dc
        ("siu_s17_v251.hl7", "entered-in-error"),
        ("siu_s26_v251.hl7", "noshow"),
        ("siu_s14_v28.hl7", "fulfilled"),  # SCH-25 Complete
        ("siu_s12_v28_waitlist.hl7", "waitlist"),
    ],
)
def test_status_per_trigger_and_version(name: str, status: str) -> None:
    result = run(name)
    appt = result.resources[0]
    assert appt["resourceType"] == "Appointment"
    assert appt["status"] == status
    assert result.message_type == f"SIU^{name[4:7].upper()}"
    assert appt["participant"][0]["actor"]["reference"] == f"Patient/{result.patient['id']}"  # type: ignore[index]


def test_s12_v23_start_from_ais4_over_sch11_and_identifiers() -> None:
    result = run("siu_s12_v23.hl7")
    appt = result.resources[0]
    assert result.version == "2.3" and result.trigger_event == "S12"
    # AIS-4 14:00 + AIS-7 30 MIN wins over SCH-11 TQ 13:55-14:25; EDT after the 10 Mar change
    assert (appt["start"], appt["end"], appt["minutesDuration"]) == (
        "2024-03-11T14:00:00-04:00", "2024-03-11T14:30:00-04:00", 30)
    placer, filler = appt["identifier"]
    assert placer["type"]["coding"][0]["code"] == "PLAC" and placer["value"] == "PL1001"
    assert filler["system"] == "urn:careloop:id:EPIC" and filler["value"] == "FL2001"
    assert appt["id"].startswith("a-")
    assert appt["serviceType"][0]["coding"][0] == {"system": "http://www.ama-assn.org/go/cpt", "code": "99213",
                                                   "display": "Office visit est"}
    assert appt["reasonCode"][0]["coding"][0]["code"] == "ROUTINE"  # SCH-7
    assert appt["appointmentType"]["coding"][0]["system"].endswith("v2-0277")  # SCH-8
    assert appt["comment"] == "Bring med list & insurance card\nArrive 15 min early"  # NTE-3 unescaped
    kinds = [p["actor"].get("type") for p in appt["participant"]]
    assert kinds == ["Patient", "Practitioner", "Location"]  # AIP-3, AIL-3
    assert appt["participant"][1]["actor"]["display"] == "DR TEST DOCTOR"
    assert appt["participant"][2]["actor"]["display"] == "CLINIC1 EXAM3, HOSPA"
    assert all(p["status"] == "accepted" and p["required"] == "required" for p in appt["participant"])


def test_same_appointment_id_across_versions_of_the_same_booking() -> None:
    ids = {run(n).resources[0]["id"] for n in ("siu_s12_v23.hl7", "siu_s13_v23.hl7", "siu_s15_v23.hl7", "siu_s26_v23.hl7")}
    assert len(ids) == 1  # filler id FL2001^EPIC


def test_s13_v23_ail_time_when_no_ais_time() -> None:
    appt = run("siu_s13_v23.hl7").resources[0]
    assert (appt["start"], appt["end"]) == ("2024-03-12T10:00:00-04:00", "2024-03-12T10:45:00-04:00")  # AIL-6 + AIL-9


def test_s14_v23_sch11_tq_components_4_and_5() -> None:
    appt = run("siu_s14_v23.hl7").resources[0]
    assert (appt["start"], appt["end"]) == ("2024-03-12T10:00:00-04:00", "2024-03-12T10:45:00-04:00")


def test_s13_v251_aig_before_aip_and_tq1() -> None:
    appt = run("siu_s13_v251.hl7").resources[0]
    assert (appt["start"], appt["end"]) == ("2024-04-03T09:00:00-04:00", "2024-04-03T10:00:00-04:00")  # AIG-8 + 1 h
    aig = appt["participant"][-1]
    assert aig["actor"]["display"] == "Ultrasound unit 1" and aig["type"][0]["coding"][0]["code"] == "EQUIP"
    aip = appt["participant"][1]
    assert aip["period"] == {"start": "2024-04-03T10:00:00-04:00", "end": "2024-04-03T10:30:00-04:00"}


def test_s12_v251_tq1_when_no_resource_times() -> None:
    result = run("siu_s12_v251.hl7")
    appt = result.resources[0]
    assert result.version == "2.5.1" and result.message_type == "SIU^S12"
    assert (appt["start"], appt["end"]) == ("2024-04-02T09:15:00-04:00", "2024-04-02T09:45:00-04:00")
    assert appt["comment"] == "First line\nSecond | line A"
    assert appt["participant"][1]["actor"]["identifier"]["system"] == "urn:careloop:id:NPI"
    assert appt["participant"][1]["type"][0]["coding"][0]["code"] == "D"  # AIP-4


def test_s15_v251_cancelation_reason_from_sch6() -> None:
    appt = run("siu_s15_v251.hl7").resources[0]
    assert appt["cancelationReason"]["coding"][0]["code"] == "WEATHER"
    assert appt["reasonCode"][0]["coding"][0]["code"] == "ANNUAL"


def test_s14_v28_sch9_duration_and_ambiguous_fall_back_time() -> None:
    appt = run("siu_s14_v28.hl7").resources[0]
    # AIS-4 01:30 on 3 Nov 2024 (happens twice in New York): first occurrence, EDT
    assert appt["start"] == "2024-11-03T01:30:00-04:00"
    assert appt["end"] == "2024-11-03T01:50:00-04:00"  # + SCH-9/SCH-10 20 min


def test_waitlist_without_times_is_valid() -> None:
    appt = run("siu_s12_v28_waitlist.hl7").resources[0]
    assert "start" not in appt and "end" not in appt


def test_s17_v251_placer_only_id() -> None:
    appt = run("siu_s17_v23.hl7").resources[0]
    assert [i["value"] for i in appt["identifier"]] == ["PL1003"]


def test_no_usable_patient_identifier_is_a_content_error() -> None:
    text = load("siu_s12_v251.hl7").replace(
        "PID|1||E000777^^^EPI^PI~MRN000123^^^HOSPA^MR~MRN900123^^^OTHERHOSP^MR~123-45-6789^^^USSSA^SS",
        "PID|1||123-45-6789^^^USSSA^SS")
    with pytest.raises(Hl7ContentError) as err:
        normalize_hl7(text, make_source())
    assert (err.value.segment, err.value.field, err.value.code) == ("PID", 3, "101")


def test_unknown_siu_trigger_is_201() -> None:
    text = load("siu_s12_v251.hl7").replace("SIU^S12^SIU_S12", "SIU^S23^SIU_S12")
    with pytest.raises(Hl7ContentError) as err:
        normalize_hl7(text, make_source())
    assert err.value.code == "201" and err.value.segment == "MSH" and err.value.field == 9


def test_missing_ids_in_sch_is_101() -> None:
    text = load("siu_s14_v23.hl7").replace("SCH|PL1001^EPIC|FL2001^EPIC|", "SCH|||")
    with pytest.raises(Hl7ContentError) as err:
        normalize_hl7(text, make_source())
    assert (err.value.segment, err.value.code) == ("SCH", "101")
