"""Queries of careloop's internal patient id (``storage/patient_ids.py``)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ..sql import param, query
from ._tables import EVENT, PATIENT, TRIGGER, table

IDENTITY = table("patient_identity")
IDENTIFIER = table("patient_identifier")


def _insert(dialect: str) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(IDENTIFIER)


BY_KEY = query("patients.by_key", select(IDENTIFIER.c.patient_id).where(IDENTIFIER.c.patient_key == param("patient_key")))
CLAIM_KEY = query("patients.claim_key", lambda d: _insert(d).values(
    patient_key=param("patient_key"), patient_id=param("patient_id"), created_at=param("now"))
    .on_conflict_do_nothing(index_elements=["patient_key"]).returning(IDENTIFIER.c.patient_id))
NEW_ID = query("patients.new_id", IDENTITY.insert().values(id=param("patient_id"), merged_into=None, created_at=param("now"),
                                                             merged_at=None))
MERGED_INTO = query("patients.merged_into", select(IDENTITY.c.merged_into).where(IDENTITY.c.id == param("patient_id")))
KEY_MERGED_INTO = query("patients.key_merged_into", select(PATIENT.c.merged_into).where(PATIENT.c.key == param("key")))


def _adopt(dialect: str) -> Any:
    ins = _insert(dialect).values(patient_key=param("patient_key"), patient_id=param("patient_id"), created_at=param("now"))
    return ins.on_conflict_do_update(index_elements=["patient_key"], set_={"patient_id": ins.excluded.patient_id})


ADOPT_KEY = query("patients.adopt_key", _adopt)
FLATTEN = query("patients.flatten", IDENTITY.update().where(IDENTITY.c.merged_into == param("retired"))
                .values(merged_into=param("survivor")))
RETIRE = query("patients.retire", IDENTITY.update().where(IDENTITY.c.id == param("retired"))
               .values(merged_into=param("survivor"), merged_at=param("now")))
REPOINT_IDENTIFIERS = query("patients.repoint_identifiers", IDENTIFIER.update()
                            .where(IDENTIFIER.c.patient_id == param("retired")).values(patient_id=param("survivor")))
REPOINT_EVENTS = query("patients.repoint_events", EVENT.update()
                       .where(EVENT.c.patient_id == param("retired")).values(patient_id=param("survivor")))
REPOINT_TRIGGERS = query("patients.repoint_triggers", TRIGGER.update()
                         .where(TRIGGER.c.patient_id == param("retired")).values(patient_id=param("survivor")))
