"""Deterministic synthetic FHIR R4 data for the sandbox (no PHI, ever).

Every resource is obviously fake: family names ``Testpatient``/``Testdoctor``, MRNs in the
``urn:careloop:sandbox:mrn`` system, phone numbers in the fictional 555-0100..555-0199 block,
addresses in "Testville", and a ``urn:careloop:sandbox|synthetic`` meta tag. Ids are fixed
client ids (``sbx-…``) and the transaction bundle uses PUT, so re-seeding is idempotent.

Usage::

    resources = generate(20, seed=42)
    post_bundle("http://127.0.0.1:8090/fhir", as_transaction_bundle(resources))

or ``python -m middleware.sandbox.seed --patients 20 --url http://127.0.0.1:8090/fhir``.
"""
from __future__ import annotations

import argparse
import random
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import httpx

MRN_SYSTEM = "urn:careloop:sandbox:mrn"
NPI_SYSTEM = "urn:careloop:sandbox:practitioner"
SYNTHETIC_TAG = {"system": "urn:careloop:sandbox", "code": "synthetic", "display": "Synthetic sandbox data"}
TIMEZONE_EXT = "http://hl7.org/fhir/StructureDefinition/timezone"
FAKE_CITY = "Testville"
FAKE_STATE = "ZZ"

_GIVEN = [
    "Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India",
    "Juliet", "Kilo", "Lima", "Mike", "November", "Oscar", "Papa", "Quebec", "Romeo",
    "Sierra", "Tango", "Uniform", "Victor", "Whiskey", "Xray", "Yankee", "Zulu",
]
_STREETS = ["Test Street", "Sample Avenue", "Example Road", "Placeholder Lane", "Mock Boulevard"]
_LOCATIONS = [
    ("sbx-loc-north", "Sandbox Clinic North", "America/New_York"),
    ("sbx-loc-south", "Sandbox Clinic South", "America/Chicago"),
    ("sbx-loc-ward", "Sandbox General Ward", "America/New_York"),
]
_V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_DISCHARGE = "http://terminology.hl7.org/CodeSystem/discharge-disposition"

Resource = dict[str, Any]


def _meta() -> dict[str, Any]:
    return {"tag": [dict(SYNTHETIC_TAG)]}


def _instant(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ref(resource: Resource) -> dict[str, str]:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def _phone(rng: random.Random) -> str:
    return f"555-01{rng.randrange(100):02d}"


def _address(rng: random.Random) -> dict[str, Any]:
    return {
        "use": "home",
        "line": [f"{rng.randrange(1, 999)} {rng.choice(_STREETS)}"],
        "city": FAKE_CITY,
        "state": FAKE_STATE,
        "postalCode": f"0{rng.randrange(1000, 9999)}",
        "country": "ZZ",
    }


def _locations() -> list[Resource]:
    out = []
    for lid, name, tz in _LOCATIONS:
        out.append({
            "resourceType": "Location",
            "id": lid,
            "meta": _meta(),
            "extension": [{"url": TIMEZONE_EXT, "valueCode": tz}],
            "status": "active",
            "name": name,
            "mode": "instance",
            "address": {"line": ["1 Sandbox Plaza"], "city": FAKE_CITY, "state": FAKE_STATE, "country": "ZZ"},
        })
    return out


def _practitioners(n: int, rng: random.Random) -> list[Resource]:
    out = []
    for i in range(n):
        out.append({
            "resourceType": "Practitioner",
            "id": f"sbx-prac-{i + 1:03d}",
            "meta": _meta(),
            "identifier": [{"system": NPI_SYSTEM, "value": f"SBXP{i + 1:05d}"}],
            "active": True,
            "name": [{"family": "Testdoctor", "given": [_GIVEN[i % len(_GIVEN)]], "prefix": ["Dr."]}],
            "telecom": [{"system": "phone", "value": _phone(rng), "use": "work"}],
        })
    return out


def _patient(i: int, rng: random.Random, anchor: date) -> Resource:
    birth = anchor - timedelta(days=rng.randrange(365 * 2, 365 * 90))
    return {
        "resourceType": "Patient",
        "id": f"sbx-pat-{i + 1:04d}",
        "meta": _meta(),
        "identifier": [{
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": MRN_SYSTEM,
            "value": f"SBX{i + 1:06d}",
        }],
        "active": True,
        "name": [{
            "use": "official",
            "family": "Testpatient",
            "given": [_GIVEN[i % len(_GIVEN)], f"Synthetic{i + 1}"],
        }],
        "telecom": [
            {"system": "phone", "value": _phone(rng), "use": "mobile"},
            {"system": "email", "value": f"testpatient{i + 1}@example.invalid"},
        ],
        "gender": rng.choice(["female", "male", "other", "unknown"]),
        "birthDate": birth.isoformat(),
        "address": [_address(rng)],
    }


def _appointment(aid: str, patient: Resource, prac: Resource, loc: Resource, start: datetime,
                 minutes: int, status: str) -> Resource:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "meta": _meta(),
        "status": status,
        "description": "Synthetic sandbox appointment",
        "start": _instant(start),
        "end": _instant(start + timedelta(minutes=minutes)),
        "minutesDuration": minutes,
        "participant": [
            {"actor": {**_ref(patient), "display": "Testpatient"}, "required": "required", "status": "accepted"},
            {"actor": _ref(prac), "required": "required", "status": "accepted"},
            {"actor": _ref(loc), "required": "required", "status": "accepted"},
        ],
    }


def _encounter(eid: str, kind: int, patient: Resource, prac: Resource, loc: Resource,
               base: datetime, rng: random.Random) -> Resource:
    enc: Resource = {
        "resourceType": "Encounter",
        "id": eid,
        "meta": _meta(),
        "subject": _ref(patient),
        "participant": [{"individual": _ref(prac)}],
        "location": [{"location": _ref(loc)}],
    }
    if kind == 0:  # finished inpatient stay, discharged home
        admit = base - timedelta(days=rng.randrange(3, 20), hours=rng.randrange(0, 12))
        discharge = admit + timedelta(days=rng.randrange(1, 5), hours=rng.randrange(1, 10))
        enc.update({
            "status": "finished",
            "class": {"system": _V3_ACT, "code": "IMP", "display": "inpatient encounter"},
            "period": {"start": _instant(admit), "end": _instant(discharge)},
            "hospitalization": {
                "dischargeDisposition": {"coding": [{"system": _DISCHARGE, "code": "home", "display": "Home"}]}
            },
        })
    elif kind == 1:  # inpatient, still in hospital
        admit = base - timedelta(days=rng.randrange(0, 3), hours=rng.randrange(1, 12))
        enc.update({
            "status": "in-progress",
            "class": {"system": _V3_ACT, "code": "IMP", "display": "inpatient encounter"},
            "period": {"start": _instant(admit)},
        })
    else:  # finished ambulatory visit
        visit = base - timedelta(days=rng.randrange(1, 60), hours=rng.randrange(0, 8))
        enc.update({
            "status": "finished",
            "class": {"system": _V3_ACT, "code": "AMB", "display": "ambulatory"},
            "period": {"start": _instant(visit), "end": _instant(visit + timedelta(minutes=30))},
        })
    return enc


def _careplan(cid: str, patient: Resource, prac: Resource, loc: Resource, base: datetime,
              rng: random.Random) -> Resource:
    start = base + timedelta(days=rng.randrange(3, 30), hours=rng.randrange(8, 16))
    return {
        "resourceType": "CarePlan",
        "id": cid,
        "meta": _meta(),
        "status": "active",
        "intent": "plan",
        "title": "Synthetic follow-up plan",
        "subject": _ref(patient),
        "period": {"start": _instant(base - timedelta(days=1))},
        "activity": [{
            "detail": {
                "kind": "Appointment",
                "code": {"text": "Follow-up visit"},
                "status": "scheduled",
                "scheduledPeriod": {"start": _instant(start), "end": _instant(start + timedelta(minutes=30))},
                "location": _ref(loc),
                "performer": [_ref(prac)],
                "description": "Synthetic scheduled follow-up",
            }
        }],
    }


def generate(n_patients: int, seed: int = 42, anchor: date | None = None) -> list[Resource]:
    """Generate synthetic R4 resources for ``n_patients`` patients, deterministically.

    Same ``seed`` and ``anchor`` (the reference day, default: today in UTC) give identical
    output. Per patient: one future and one past booked Appointment, one Encounter (cycling
    finished IMP discharged home / in-progress IMP / finished AMB) and one active CarePlan.
    Shared: 3 Locations and ``max(2, n_patients // 5)`` Practitioners. Order: Locations,
    Practitioners, Patients, then Appointments, Encounters, CarePlans.
    """
    if n_patients < 0:
        raise ValueError("n_patients must be >= 0")
    rng = random.Random(seed)
    day = anchor or datetime.now(timezone.utc).date()
    base = datetime.combine(day, time(12, 0), tzinfo=timezone.utc)

    locations = _locations()
    practitioners = _practitioners(max(2, n_patients // 5), rng)
    patients: list[Resource] = []
    clinical: list[Resource] = []
    encounters: list[Resource] = []
    careplans: list[Resource] = []
    for i in range(n_patients):
        pat = _patient(i, rng, day)
        patients.append(pat)
        prac = practitioners[i % len(practitioners)]
        loc = locations[i % 2]  # the two clinics; the ward is for inpatients
        n = f"{i + 1:04d}"
        future = base + timedelta(days=rng.randrange(1, 45), hours=rng.randrange(-3, 5),
                                  minutes=rng.choice([0, 15, 30, 45]))
        past = base - timedelta(days=rng.randrange(1, 45), hours=rng.randrange(-3, 5),
                                minutes=rng.choice([0, 15, 30, 45]))
        clinical.append(_appointment(f"sbx-appt-{n}-f", pat, prac, loc, future, rng.choice([15, 30, 45]), "booked"))
        clinical.append(_appointment(f"sbx-appt-{n}-p", pat, prac, loc, past, rng.choice([15, 30, 45]), "booked"))
        kind = i % 3
        enc_loc = locations[2] if kind in (0, 1) else loc
        encounters.append(_encounter(f"sbx-enc-{n}", kind, pat, prac, enc_loc, base, rng))
        careplans.append(_careplan(f"sbx-cp-{n}", pat, prac, loc, base, rng))
    return locations + practitioners + patients + clinical + encounters + careplans


def as_transaction_bundle(resources: list[Resource]) -> Resource:
    """Wrap resources in a FHIR transaction Bundle of ``PUT Type/id`` entries (idempotent)."""
    entries = []
    for res in resources:
        rid = res.get("id")
        if not rid:
            raise ValueError(f"{res.get('resourceType')} without an id cannot be PUT")
        url = f"{res['resourceType']}/{rid}"
        entries.append({"fullUrl": url, "resource": res, "request": {"method": "PUT", "url": url}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def post_bundle(base_url: str, bundle: Resource, timeout_s: float = 120.0,
                client: httpx.Client | None = None) -> Resource:
    """POST ``bundle`` to the FHIR base URL; return the transaction-response Bundle.

    Raises ``httpx.HTTPStatusError`` on a non-2xx answer.
    """
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    url = base_url.rstrip("/")
    if client is None:
        with httpx.Client(timeout=timeout_s) as own:
            r = own.post(url, json=bundle, headers=headers)
    else:
        r = client.post(url, json=bundle, headers=headers, timeout=timeout_s)
    r.raise_for_status()
    out: Resource = r.json()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: seed a running sandbox."""
    ap = argparse.ArgumentParser(description="Seed the HAPI sandbox with synthetic data")
    ap.add_argument("--url", default="http://127.0.0.1:8090/fhir", help="FHIR base URL")
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    resources = generate(args.patients, seed=args.seed)
    resp = post_bundle(args.url, as_transaction_bundle(resources))
    print(f"seeded {len(resources)} resources ({len(resp.get('entry', []))} entries) into {args.url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
