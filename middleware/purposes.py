"""The purposes of a contact, defined once (``purpose:`` on every rule and journey).

A leaf module: it imports nothing of careloop, so rules, scheduler, delivery, storage
and config all read the same definitions. Every decision that depends on the purpose
asks this table rather than comparing the purpose's name:

* ``clinically_required``: a contact the patient's care depends on. It is **never
  dropped because data is missing**: when a change cannot be evaluated (a partial
  update, an id-only notification not yet read) its pending trigger is kept and
  flagged; rules of these purposes must state ``on_no_longer_matching`` explicitly.
* ``drop_on_missing_data``: a trigger flagged because its rule could not be
  re-evaluated on a change is suppressed at its due time instead of sent (nothing is
  sent on data careloop could not check).
* ``may_hold_out``: may a randomized holdout keep some eligible patients back (issue
  14)? Never for treatment or care coordination (except an approved study).
* ``needs_authorization``: needs a recorded marketing authorization (HIPAA
  45 CFR 164.508(a)(3); TCPA prior express written consent for sms/voice), checked at
  fire time and again at send time.
* ``fcc_healthcare_exemption``: sms/voice contacts count together against
  ``settings.treatment_caps`` (FCC 2015 healthcare exemption: 1 a day, 3 a week).
* ``exit_fields``: everything an exit event sent to a destination may carry (issue
  17). A reason is itself health information ("deceased", "follow-up booked"), so no
  purpose lets an exit carry one.
* ``consent_codes``: the HL7 v3 ActReason codes (and our own name) that a FHIR
  Consent's ``provision.purpose`` uses for this purpose.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

#: the purpose names a rule or journey may declare
Purpose = Literal["treatment-reminder", "care-coordination", "marketing"]

#: what an exit event may say, for every purpose: a generic ``careloop_exit`` with ids only
GENERIC_EXIT_FIELDS: tuple[str, ...] = ("event", "contact_key", "journey", "entry_id", "trigger_id")


@dataclass(frozen=True)
class PurposeSpec:
    name: str
    description: str
    clinically_required: bool
    drop_on_missing_data: bool
    may_hold_out: bool
    needs_authorization: bool
    fcc_healthcare_exemption: bool
    exit_fields: tuple[str, ...]
    consent_codes: frozenset[str]


PURPOSES: dict[str, PurposeSpec] = {
    "treatment-reminder": PurposeSpec(
        name="treatment-reminder",
        description="a reminder about the patient's own care: an appointment, a recall, a preparation step",
        clinically_required=True, drop_on_missing_data=False, may_hold_out=False, needs_authorization=False,
        fcc_healthcare_exemption=True, exit_fields=GENERIC_EXIT_FIELDS,
        consent_codes=frozenset({"treatment-reminder", "TREAT", "PATADMIN"}),
    ),
    "care-coordination": PurposeSpec(
        name="care-coordination",
        description="outreach the care team owes the patient: post-discharge contact, follow-up visits, care plans",
        clinically_required=True, drop_on_missing_data=False, may_hold_out=False, needs_authorization=False,
        fcc_healthcare_exemption=False, exit_fields=GENERIC_EXIT_FIELDS,
        consent_codes=frozenset({"care-coordination", "CAREMGT", "TREAT", "HOPERAT"}),
    ),
    "marketing": PurposeSpec(
        name="marketing",
        description="a communication about a product or service that is not the patient's own treatment",
        clinically_required=False, drop_on_missing_data=True, may_hold_out=True, needs_authorization=True,
        fcc_healthcare_exemption=False, exit_fields=GENERIC_EXIT_FIELDS,
        consent_codes=frozenset({"marketing", "HMARKT", "MARKT"}),
    ),
}

assert set(PURPOSES) == set(get_args(Purpose)), "PURPOSES and Purpose must name the same purposes"

#: every purpose, in the documented order (a destination's default ``policy.purposes``)
ALL: tuple[str, ...] = tuple(PURPOSES)


def spec(purpose: str | None) -> PurposeSpec | None:
    """The definition of ``purpose``, or None for an unknown name (old rows, typos in data)."""
    return PURPOSES.get(purpose or "")


def needs_authorization(purpose: str | None) -> bool:
    """Does a contact of this purpose need a recorded marketing authorization? Unknown: yes (fail closed)."""
    p = spec(purpose)
    return True if p is None else p.needs_authorization


def clinically_required(purpose: str | None) -> bool:
    p = spec(purpose)
    return False if p is None else p.clinically_required


def drop_on_missing_data(purpose: str | None) -> bool:
    """May a trigger of this purpose be dropped when its data could not be checked? Unknown: yes."""
    p = spec(purpose)
    return True if p is None else p.drop_on_missing_data


def may_hold_out(purpose: str | None) -> bool:
    p = spec(purpose)
    return False if p is None else p.may_hold_out


def fcc_healthcare_exemption(purpose: str | None) -> bool:
    p = spec(purpose)
    return False if p is None else p.fcc_healthcare_exemption


def consent_codes(purpose: str) -> frozenset[str]:
    """Codes a FHIR Consent provision may use for ``purpose`` (the name itself for an unknown one)."""
    p = spec(purpose)
    return p.consent_codes if p is not None else frozenset({purpose})


def exit_fields(purpose: str | None) -> tuple[str, ...]:
    p = spec(purpose)
    return p.exit_fields if p is not None else GENERIC_EXIT_FIELDS


def table() -> list[dict[str, object]]:
    """The taxonomy as rows (docs, ``careloop purposes``)."""
    return [{"purpose": p.name, "description": p.description, "clinically_required": p.clinically_required,
             "drop_on_missing_data": p.drop_on_missing_data, "may_hold_out": p.may_hold_out,
             "needs_authorization": p.needs_authorization, "fcc_healthcare_exemption": p.fcc_healthcare_exemption,
             "exit_fields": list(p.exit_fields)} for p in PURPOSES.values()]
