"""The sandbox journeys as data: resources to write on HAPI, step by step, and what careloop
should make of each step (events, triggers fired / cancelled, sink deliveries).

Everything here is synthetic (family ``Testpatient``, MRNs in ``urn:careloop:sandbox:mrn``,
tag ``urn:careloop:sandbox|synthetic``) and pure: :func:`build` takes the run tag and
``now`` and returns the steps; :mod:`.scenarios` performs them and watches careloop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .seed import MRN_SYSTEM, SYNTHETIC_TAG, _locations

Json = dict[str, Any]
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0112 = "http://terminology.hl7.org/CodeSystem/v2-0112"

SCENARIOS: dict[str, str] = {
    "book-then-no-show": "an appointment is booked, then the patient does not show up",
    "discharge-no-followup": "admitted, discharged home, no follow-up visit booked",
    "discharge-then-followup-booked": "admitted, discharged home, a follow-up visit booked within 7 days",
    "careplan-activated": "a draft care plan becomes active",
    "appointment-cancelled": "a booked appointment is cancelled and not rebooked",
    "reminder-exit": "a reminder reaches the destination's journey; the visit is cancelled, and careloop takes the "
                     "patient out of that journey there (careloop_exit)",
    "outcomes": "a few hundred synthetic no-shows, a 50% holdout, seeded rebookings: the outcome report "
                "must equal the ground truth (outcomes_scenario.py)",
}
#: scenarios that are not one patient's journey (run by their own module, not :func:`build`)
BULK = frozenset({"outcomes"})
ALIASES = {"admit-discharge-no-followup": "discharge-no-followup"}


@dataclass(frozen=True)
class Write:
    """One change on HAPI: ``PUT {type}/{id}`` with ``resource`` (or a DELETE when ``delete``)."""

    resource: Json
    delete: bool = False

    @property
    def ref(self) -> str:
        return f"{self.resource['resourceType']}/{self.resource['id']}"


@dataclass(frozen=True)
class Step:
    """A journey step: the writes, then what careloop must show for it.

    ``events``: event types (``appointment.noshow``); ``fired``: rule ids whose trigger must
    be delivered to the sink; ``cancelled``: rule ids whose pending trigger must be closed
    without firing; ``note``: said in the output (e.g. what was sped up).
    """

    title: str
    writes: tuple[Write, ...]
    events: tuple[str, ...] = ()
    fired: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Journey:
    name: str
    description: str
    tag: str
    patient: Json
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def resource_ids(self) -> set[str]:
        return {w.ref for s in self.steps for w in s.writes}


def canonical(name: str) -> str:
    """The scenario name for ``name`` (aliases resolved); raises KeyError for unknown names."""
    name = ALIASES.get(name, name)
    if name not in SCENARIOS:
        raise KeyError(name)
    return name


def _instant(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta() -> Json:
    return {"tag": [dict(SYNTHETIC_TAG)]}


def patient(tag: str) -> Json:
    """A synthetic Patient for one run (id ``sbx-run-<tag>``)."""
    return {
        "resourceType": "Patient", "id": f"sbx-run-{tag}", "meta": _meta(), "active": True,
        "identifier": [{"use": "usual", "system": MRN_SYSTEM, "value": f"SBXRUN-{tag}",
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "name": [{"use": "official", "family": "Testpatient", "given": ["Scenario", tag]}],
        "telecom": [{"system": "phone", "value": "555-0100", "use": "mobile"},
                    {"system": "email", "value": f"scenario-{tag}@example.invalid"}],
        "gender": "unknown", "birthDate": "1970-01-01",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/New_York"}],
    }


def appointment(aid: str, pat: Json, start: datetime, status: str, minutes: int = 30) -> Json:
    return {
        "resourceType": "Appointment", "id": aid, "meta": _meta(), "status": status,
        "description": "Synthetic sandbox scenario appointment",
        "serviceType": [{"coding": [{"code": "follow-up", "display": "Follow-up visit"}]}],
        "start": _instant(start), "end": _instant(start + timedelta(minutes=minutes)), "minutesDuration": minutes,
        "participant": [
            {"actor": {"reference": f"Patient/{pat['id']}", "display": "Testpatient"}, "required": "required",
             "status": "accepted"},
            {"actor": {"reference": "Location/sbx-loc-north", "display": "Sandbox Clinic North"},
             "required": "required", "status": "accepted"},
        ],
    }


def encounter(eid: str, pat: Json, status: str, admit: datetime, discharge: datetime | None = None) -> Json:
    enc: Json = {
        "resourceType": "Encounter", "id": eid, "meta": _meta(), "status": status,
        "class": {"system": V3_ACT, "code": "IMP", "display": "inpatient encounter"},
        "subject": {"reference": f"Patient/{pat['id']}"},
        "period": {"start": _instant(admit)},
    }
    if discharge is not None:
        enc["period"]["end"] = _instant(discharge)
        enc["hospitalization"] = {"dischargeDisposition": {"coding": [
            {"system": V2_0112, "code": "01", "display": "Discharged to home or self care"}]}}
    return enc


def careplan(cid: str, pat: Json, status: str, now: datetime) -> Json:
    return {
        "resourceType": "CarePlan", "id": cid, "meta": _meta(), "status": status, "intent": "plan",
        "title": "Synthetic diabetes self-management program", "subject": {"reference": f"Patient/{pat['id']}"},
        "period": {"start": _instant(now)},
    }


def build(name: str, tag: str, now: datetime) -> Journey:
    """The journey ``name`` for one run; ids are ``sbx-run-<tag>-…`` so runs never collide."""
    name = canonical(name)
    if name in BULK:
        raise ValueError(f"{name} is not a single-patient journey (see outcomes_scenario.py)")
    pat = patient(tag)
    p = f"sbx-run-{tag}"
    clinic = Write(next(loc for loc in _locations() if loc["id"] == "sbx-loc-north"))  # seeded; PUT is idempotent
    steps: list[Step]
    if name == "book-then-no-show":
        start = now - timedelta(minutes=20)  # today's visit, started 20 minutes ago
        booked = appointment(f"{p}-appt", pat, start, "booked")
        steps = [
            Step("Patient registered, visit booked (started 20 min ago)", (clinic, Write(pat), Write(booked)),
                 events=("appointment.booked",)),
            Step("Front desk marks the visit as no-show", (Write({**booked, "status": "noshow"}),),
                 events=("appointment.noshow",), fired=("noshow-reengagement",),
                 note="noshow-reengagement waits 1h after the no-show in the real rules"),
        ]
    elif name in ("discharge-no-followup", "discharge-then-followup-booked"):
        admit = now - timedelta(days=3)
        enc = encounter(f"{p}-enc", pat, "in-progress", admit)
        steps = [
            Step("Patient admitted (inpatient encounter in progress)", (Write(pat), Write(enc)),
                 events=("encounter.in-progress",)),
            Step("Patient discharged home", (Write(encounter(f"{p}-enc", pat, "finished", admit, now)),),
                 events=("encounter.finished",), fired=("tcm-contact-2bd",)),
        ]
        if name == "discharge-no-followup":
            steps.append(Step("No follow-up visit booked: the follow-up windows run out", (),
                              fired=("tcm-visit-7d", "tcm-visit-14d"),
                              note="tcm-visit-7d waits 2 business days and tcm-visit-14d 7 days in the real rules"))
        else:
            follow = appointment(f"{p}-followup", pat, now + timedelta(days=4), "booked")
            steps.append(Step("Follow-up visit booked for 4 days after discharge", (clinic, Write(follow)),
                              events=("appointment.booked",), cancelled=("tcm-visit-7d", "tcm-visit-14d")))
    elif name == "careplan-activated":
        draft = careplan(f"{p}-cp", pat, "draft", now)
        steps = [
            Step("Care plan drafted", (Write(pat), Write(draft))),
            Step("Care plan activated", (Write({**draft, "status": "active"}),),
                 events=("careplan.active",), fired=("careplan-enrollment",)),
        ]
    elif name == "reminder-exit":
        start = now + timedelta(days=3, seconds=30)  # the 72-hour reminder is due in 30 seconds
        booked = appointment(f"{p}-appt", pat, start, "booked")
        steps = [
            Step("Visit booked 3 days out: the 72-hour reminder enters the destination's journey",
                 (clinic, Write(pat), Write(booked)), events=("appointment.booked",), fired=("appointment-reminder-72h",),
                 note="the visit starts 3 days and 30 seconds from now, so the 72-hour reminder is due in 30 s"),
            Step("Visit cancelled: careloop cancels its 24-hour reminder and exits the journey at the destination",
                 (Write({**booked, "status": "cancelled"}),), events=("appointment.cancelled",),
                 cancelled=("appointment-reminder-24h",), exited=("appointment-reminder-72h",),
                 note="the exit is a generic careloop_exit (ids only, no reason), signed like an entry"),
        ]
    else:  # appointment-cancelled
        booked = appointment(f"{p}-appt", pat, now + timedelta(days=10), "booked")
        steps = [
            Step("Visit booked for 10 days from now (reminders scheduled)", (clinic, Write(pat), Write(booked)),
                 events=("appointment.booked",)),
            Step("Visit cancelled, not rebooked", (Write({**booked, "status": "cancelled"}),),
                 events=("appointment.cancelled",), fired=("cancelled-not-rebooked-48h",),
                 cancelled=("appointment-reminder-72h", "appointment-reminder-24h"),
                 note="cancelled-not-rebooked-48h waits 48h for a new booking in the real rules"),
        ]
    return Journey(name, SCENARIOS[name], tag, pat, tuple(steps))
