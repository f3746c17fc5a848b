"""Queries of careloop's internal patient id (``storage/patient_ids.py``)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select, union
from sqlmodel import SQLModel

from .. import tables  # noqa: F401  (registers the tables on the metadata)
from ..sql import any_of, param, query
from .ingest import _insert

T = SQLModel.metadata.tables
identity = T["patient_identity"]
identifier = T["patient_identifier"]
patient = T["patient"]
event = T["event"]
trigger = T["trigger"]

BY_KEY = query("patient_ids.by_key", select(identifier.c.patient_id).where(identifier.c.patient_key == param("key")))

#: the patient keys of an internal id (oldest first) and the ids of a list of keys (console links)
KEYS_OF = query("patient_ids.keys_of", select(identifier.c.patient_key).where(identifier.c.patient_id == param("pid"))
                .order_by(identifier.c.created_at, identifier.c.patient_key))
IDS_OF = query("patient_ids.ids_of", select(identifier.c.patient_key, identifier.c.patient_id)
               .where(any_of(identifier.c.patient_key, "keys")))


def _claim(dialect: str) -> Any:
    """Map a key to a new id unless it is mapped already (the first claim wins); the id if it won."""
    return (_insert(dialect, identifier).values(patient_key=param("key"), patient_id=param("pid"), created_at=param("now"))
            .on_conflict_do_nothing(index_elements=[identifier.c.patient_key]).returning(identifier.c.patient_id))


CLAIM = query("patient_ids.claim", _claim)
NEW = query("patient_ids.new", identity.insert().values(id=param("pid"), merged_into=None, created_at=param("now"),
                                                         merged_at=None))
MERGED_INTO = query("patient_ids.merged_into", select(identity.c.merged_into).where(identity.c.id == param("pid")))
KEY_MERGED_INTO = query("patient_ids.key_merged_into", select(patient.c.merged_into).where(patient.c.key == param("key")))


def _adopt(dialect: str) -> Any:
    """Map a key to ``pid`` whatever it was mapped to before."""
    ins = _insert(dialect, identifier).values(patient_key=param("key"), patient_id=param("pid"), created_at=param("now"))
    return ins.on_conflict_do_update(index_elements=[identifier.c.patient_key], set_={"patient_id": ins.excluded.patient_id})


ADOPT = query("patient_ids.adopt", _adopt)
FLATTEN = query("patient_ids.flatten", identity.update().where(identity.c.merged_into == param("retired"))
                .values(merged_into=param("survivor")))
RETIRE = query("patient_ids.retire", identity.update().where(identity.c.id == param("retired"))
               .values(merged_into=param("survivor"), merged_at=param("now")))
#: every row stamped with the retired id takes the survivor's
REPOINT = tuple(
    query(f"patient_ids.repoint_{t.name}", t.update().where(t.c[c] == param("retired")).values({c: param("survivor")}))
    for t, c in ((identifier, "patient_id"), (event, "patient_id"), (trigger, "patient_id")))
#: patient keys of event and trigger rows written without an id
UNSTAMPED = query("patient_ids.unstamped", union(
    select(event.c.patient_key).where(event.c.patient_id.is_(None), event.c.patient_key.is_not(None)),
    select(trigger.c.patient_key).where(trigger.c.patient_id.is_(None), trigger.c.patient_key.is_not(None))))
STAMP = tuple(
    query(f"patient_ids.stamp_{t.name}", t.update().where(t.c.patient_id.is_(None), t.c.patient_key == param("key"))
          .values(patient_id=param("pid")))
    for t in (event, trigger))
