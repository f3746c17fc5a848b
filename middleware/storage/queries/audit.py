"""Reading the disclosure audit (append-only; the database refuses updates and deletes) and the
patient keys it and the patient table know (contact-key lookups and exports)."""
from __future__ import annotations

from typing import Iterator, NamedTuple

from sqlalchemy import Float, String, cast, or_, select, union

from ..sql import UnitOfWork, param, query
from ._tables import DISCLOSURE, PATIENT

_X = DISCLOSURE.c


class DisclosureRecord(NamedTuple):
    id: int
    delivery_id: int
    trigger_id: int
    patient_key: str | None
    destination: str
    fields: str
    body_sha256: str
    purpose: str
    rule_id: str
    ruleset_version: str
    sent_at: float
    outcome: str | None
    body_bytes: int | None
    request_target: str | None
    attempt: int | None


query("audit.disclosures_for",
      select(_X.id, _X.delivery_id, _X.trigger_id, _X.patient_key, _X.destination, _X.fields, _X.body_sha256, _X.purpose,
             _X.rule_id, _X.ruleset_version, _X.sent_at, _X.outcome, _X.body_bytes, _X.request_target, _X.attempt)
      .where(_X.patient_key == param("patient_key"),
             or_(cast(param("since"), Float).is_(None), _X.sent_at >= param("since")),
             or_(cast(param("until"), Float).is_(None), _X.sent_at < param("until")),
             or_(cast(param("destination"), String).is_(None), _X.destination == param("destination")))
      .order_by(_X.sent_at, _X.id), DisclosureRecord)
query("audit.of_delivery",
      select(_X.id, _X.delivery_id, _X.trigger_id, _X.patient_key, _X.destination, _X.fields, _X.body_sha256, _X.purpose,
             _X.rule_id, _X.ruleset_version, _X.sent_at, _X.outcome, _X.body_bytes, _X.request_target, _X.attempt)
      .where(_X.delivery_id == param("delivery_id")).order_by(_X.sent_at, _X.id), DisclosureRecord)
query("audit.disclosed_patients",
      select(_X.patient_key).distinct()
      .where(_X.patient_key.is_not(None),
             or_(cast(param("destination"), String).is_(None), _X.destination == param("destination")))
      .order_by(_X.patient_key))
query("audit.known_patients",
      union(select(PATIENT.c.key), select(_X.patient_key).where(_X.patient_key.is_not(None))))


def disclosures_for(u: UnitOfWork, patient_key: str, *, since: float | None, until: float | None,
                    destination: str | None) -> list[DisclosureRecord]:
    rows: list[DisclosureRecord] = u.all("audit.disclosures_for", patient_key=patient_key, since=since, until=until,
                                         destination=destination)
    return rows


def disclosed_patients(u: UnitOfWork, destination: str | None) -> Iterator[str]:
    """Distinct patient keys disclosed (to ``destination``, or to any), in key order."""
    for (key,) in u.all("audit.disclosed_patients", destination=destination):
        yield key


def known_patients(u: UnitOfWork) -> Iterator[str]:
    """Every patient key stored or disclosed (each once)."""
    for (key,) in u.all("audit.known_patients"):
        yield key


def of_delivery(u: UnitOfWork, delivery_id: int) -> list[DisclosureRecord]:
    """The disclosure rows one delivery left (one per attempt that sent, or may have sent)."""
    rows: list[DisclosureRecord] = u.all("audit.of_delivery", delivery_id=delivery_id)
    return rows
