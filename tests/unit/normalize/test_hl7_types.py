"""Datatype helpers: timestamps, escapes, CX/XPN/XAD/XTN/CWE/XCN/PL."""
from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import hl7

from middleware.config.sources import Hl7Settings, Source
from middleware.normalize.hl7_types import (
    ICD10,
    SNOMED,
    Seg,
    add,
    elapsed,
    cwe_concept,
    cx_identifier,
    duration,
    make_ctx,
    pl_display,
    ts_datetime,
    ts_fhir,
    unescape,
    xad_address,
    xcn_reference,
    xpn_name,
    xtn_contact,
)

NY = ZoneInfo("America/New_York")
SRC = Source(name="t", hl7=Hl7Settings(timezone="America/New_York", identifier_systems={"NPI": "http://hl7.org/fhir/sid/us-npi"}))
CTX = make_ctx(SRC)


def field(value: str, n: int = 1) -> Seg:
    msg = hl7.parse("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rZZZ|" + value + "\r")
    return Seg(msg.segment("ZZZ"), CTX)


def test_ts_keeps_precision_and_offset() -> None:
    assert ts_fhir("2024", NY) == "2024"
    assert ts_fhir("202403", NY) == "2024-03"
    assert ts_fhir("20240310", NY) == "2024-03-10"
    assert ts_fhir("202403101430", NY) == "2024-03-10T14:30:00-04:00"
    assert ts_fhir("20240310143000.1234+0100", NY) == "2024-03-10T14:30:00.123+01:00"
    assert ts_fhir("20240310", NY, instant=True) == "2024-03-10T00:00:00-05:00"
    assert ts_fhir("not a date", NY) is None
    assert ts_fhir("20241340", NY) is None


def test_ts_source_zone_across_dst_changes() -> None:
    before, after = ts_datetime("20240310013000", NY), ts_datetime("20240310030000", NY)
    assert before is not None and after is not None
    assert before.utcoffset() == timedelta(hours=-5) and after.utcoffset() == timedelta(hours=-4)
    assert elapsed(before, after) == timedelta(minutes=30)  # 02:00-03:00 does not exist that night
    assert add(before, timedelta(hours=1)).isoformat() == "2024-03-10T03:30:00-04:00"
    # fall back: 01:30 happens twice; without an offset the first (EDT) is taken
    assert ts_fhir("20241103013000", NY) == "2024-11-03T01:30:00-04:00"
    assert ts_fhir("20241103013000-0500", NY) == "2024-11-03T01:30:00-05:00"


def test_unescape_standard_sequences_and_bare_backslash() -> None:
    assert unescape("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", CTX) == "a|b^c&d~e\\f"
    assert unescape("line1\\.br\\line2", CTX) == "line1\nline2"
    assert unescape("\\X4869\\ there", CTX) == "Hi there"
    assert unescape("caf\\XC3A9\\", CTX) == "café"
    assert unescape("\\H\\bold\\N\\", CTX) == "bold"
    assert unescape("C:\\temp\\file", CTX) == "C:\\temp\\file"  # not escapes: kept
    assert unescape("trailing\\", CTX) == "trailing\\"


def test_cx_identifier_system_type_and_oid() -> None:
    ident, authority, typ = cx_identifier(field("MRN1^^^HOSPA^MR").rep(1))  # type: ignore[misc]
    assert ident == {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                     "system": "urn:careloop:id:HOSPA", "value": "MRN1"}
    assert (authority, typ) == ("HOSPA", "MR")
    ident, _, _ = cx_identifier(field("X9^^^&2.16.840.1.113883.19.5&ISO^MR").rep(1))  # type: ignore[misc]
    assert ident["system"] == "urn:oid:2.16.840.1.113883.19.5"
    assert cx_identifier(field("^^^HOSPA^MR").rep(1)) is None


def test_xpn_repeated_names_and_use() -> None:
    names = [xpn_name(r) for r in field("TESTPATIENT^ALPHA^Q R^JR^MS^PHD^L~TESTY^AL^^^^^N").reps(1)]
    assert names[0] == {"use": "official", "family": "TESTPATIENT", "given": ["ALPHA", "Q", "R"],
                        "prefix": ["MS"], "suffix": ["JR", "PHD"]}
    assert names[1] == {"use": "nickname", "family": "TESTY", "given": ["AL"]}


def test_xad_address() -> None:
    addr = xad_address(field("100 MAIN ST^APT 2^SPRINGFIELD^MA^01101^USA^H^^HAMPDEN").rep(1))
    assert addr == {"use": "home", "line": ["100 MAIN ST", "APT 2"], "city": "SPRINGFIELD", "district": "HAMPDEN",
                    "state": "MA", "postalCode": "01101", "country": "USA"}
    assert xad_address(field("PO BOX 5^^X^^^^M").rep(1))["type"] == "postal"  # type: ignore[index]


def test_xtn_both_layouts() -> None:
    old = xtn_contact(field("(555)555-0101X12").rep(1), "home")
    assert old == {"system": "phone", "value": "(555)555-0101X12", "use": "home"}
    new = xtn_contact(field("^WPN^PH^^1^555^5550102^12").rep(1), "home")
    assert new is not None and new["value"] == "+1 (555) 5550102 x12" and new["use"] == "work"
    assert {e["url"].rsplit("-", 1)[1]: e["valueString"] for e in new["extension"]} == {
        "country": "1", "area": "555", "local": "5550102", "extension": "12"}
    email = xtn_contact(field("^NET^Internet^alpha@example.test").rep(1))
    assert email == {"system": "email", "value": "alpha@example.test"}
    cell = xtn_contact(field("^PRN^CP^^^^^^^^^5550111").rep(1), "home")  # 2.6+ XTN-12 unformatted
    assert cell == {"system": "phone", "value": "5550111", "use": "mobile"}


def test_cwe_systems_tables_icd10_snomed() -> None:
    assert cwe_concept(field("J18.9^Pneumonia^I10").rep(1)) == {
        "coding": [{"system": ICD10, "code": "J18.9", "display": "Pneumonia"}]}
    both = cwe_concept(field("233604007^Pneumonia^SCT^PNA^Pneumonia^L^^^Pneumonia (free text)").rep(1))
    assert both is not None and both["coding"][0]["system"] == SNOMED
    assert both["coding"][1]["system"] == "urn:careloop:cs:L" and both["text"] == "Pneumonia (free text)"
    assert cwe_concept(field("01^Home^HL70112").rep(1))["coding"][0]["system"].endswith("v2-0112")  # type: ignore[index]
    assert cwe_concept(field("01").rep(1), "0112")["coding"][0]["system"].endswith("v2-0112")  # type: ignore[index]
    assert cwe_concept(field("^just text").rep(1)) == {"text": "just text"}


def test_xcn_and_pl() -> None:
    ref = xcn_reference(field("2001^ATTENDING^ALICE^B^JR^DR^MD^^NPI").rep(1))
    assert ref == {"type": "Practitioner", "identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "2001"},
                   "display": "DR ALICE B ATTENDING JR MD"}
    assert pl_display(field("4W^401^A^HOSPA").rep(1)) == "4W 401-A, HOSPA"


def test_duration_units() -> None:
    assert duration("30", "MIN") == timedelta(minutes=30)
    assert duration("1", "h") == timedelta(hours=1)
    assert duration("30", "") == timedelta(minutes=30)
    assert duration("x", "min") is None
