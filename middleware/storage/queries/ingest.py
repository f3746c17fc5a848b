"""Queries of the processing hot path: patients, resource identity and state, events, triggers."""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import select
from sqlmodel import SQLModel

from ..sql import param, query

T = SQLModel.metadata.tables
patient = T["patient"]


class PatientLink(NamedTuple):
    """Where a patient key was merged to (``None``: it survives) and its stored resource JSON."""

    merged_into: str | None
    resource: str


PATIENT_LINK = query("ingest.patient_link", select(patient.c.merged_into, patient.c.resource)
                     .where(patient.c.key == param("key")), PatientLink)
