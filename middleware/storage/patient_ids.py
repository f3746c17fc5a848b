"""careloop's stable internal patient id: one per person, kept apart from every identifier.

Three names for a patient, each with one job:

* ``patient_key`` -- the identifier as careloop keys it (``"system|MRN"``, or
  ``"<source>|Patient/<id>"``), stored on resources, events, triggers, consents and opt-outs;
  it is derived from the MRN and changes when a merge retires it.
* the **contact key** sent to a destination (``delivery/contact_keys.py``) -- a keyed
  pseudonym of the patient key; it changes when patients merge or the key is rotated.
* the **internal patient id** (this module) -- ``pt_`` and 26 base32 characters (128 bits
  from :func:`secrets.token_bytes`), drawn at random when careloop first sees a patient, so
  it cannot be derived from (or turned back into) an MRN. It never leaves careloop: no
  destination receives it. Outcomes, holdouts, exports and console links use it.

Tables: ``patient_identity`` (one row per id ever issued; ``merged_into`` names the surviving
id of a merged-away one) and ``patient_identifier`` (every patient key seen -> the *current*
id of its patient). Event and trigger rows carry ``patient_id``, stamped when they are
written (:func:`patient_id_for`).

**Merges** (ADT^A40/A34/A18 ..., ``pipeline.changes.merge_patients``): the survivor keeps its
id; every key of the merged-away patient is pointed at it, the merged-away id is recorded as
merged into it (``merged_into``, flattened: it always names a surviving id, so an old link
resolves in one hop) and the event and trigger rows stamped with the old id are re-stamped,
so "every row of this patient" is one indexed look-up by the surviving id.

``disclosure`` rows are not stamped: the audit is append-only (stamping existing rows would mean
lifting its triggers) and each row names its ``trigger_id``, whose trigger carries the id.
Merges arrive as ADT^A40 today (``normalize/hl7v2.py``); A34/A18 would take the same path.
"""
from __future__ import annotations

import base64
import secrets

from sqlalchemy.engine import Engine

from .queries import patient_ids as q
from .sql import UnitOfWork, unit

PREFIX = "pt_"


def new_patient_id() -> str:
    """A fresh random id: ``pt_`` + 128 random bits in lowercase base32 (26 characters)."""
    return PREFIX + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def lookup_patient_id(u: UnitOfWork, patient_key: str | None) -> str | None:
    """The current internal id of the patient of ``patient_key``, or None if careloop has none for it."""
    if not patient_key:
        return None
    found = u.scalar(q.BY_KEY, key=patient_key)
    return str(found) if found is not None else None


def patient_id_for(u: UnitOfWork, patient_key: str | None, now: float) -> str | None:
    """The internal id of ``patient_key``'s patient, issuing one if the key is new (None for no key).

    One indexed read when the key is known (nearly always). A new key claims its identifier row
    first (``ON CONFLICT DO NOTHING``), so two workers seeing the same new patient at once agree
    on one id; the loser reads the winner's.
    """
    if not patient_key:
        return None
    found = lookup_patient_id(u, patient_key)
    if found is not None:
        return found
    return issue_patient_id(u, patient_key, now)


def issue_patient_id(u: UnitOfWork, patient_key: str, now: float) -> str | None:
    """Issue an id for a key careloop has none for (already looked up, e.g. with the patient's
    link): the claim is one round trip, the new identity row travels with the next one."""
    pid = new_patient_id()
    if u.scalar(q.CLAIM, key=patient_key, pid=pid, now=now) is None:  # another transaction claimed this key first
        return lookup_patient_id(u, patient_key)
    u.send(q.NEW, pid=pid, now=now)
    return pid


def current_patient_id(u: UnitOfWork, patient_id: str | None) -> str | None:
    """The surviving id of ``patient_id`` (itself unless it was merged away); None if unknown."""
    seen: set[str] = set()
    pid = patient_id
    while pid and pid not in seen:
        seen.add(pid)
        row = u.one(q.MERGED_INTO, pid=pid)
        if row is None:
            return None
        if not row[0]:
            return pid
        pid = str(row[0])
    return pid


def resolve_patient_id(u: UnitOfWork, patient_key: str | None) -> str | None:
    """Key -> surviving internal id, following merges; never issues an id.

    A key merged away before careloop recorded an id for it (``patient.merged_into`` only) is
    followed to its survivor's key.
    """
    seen: set[str] = set()
    key = patient_key
    while key and key not in seen:
        seen.add(key)
        pid = lookup_patient_id(u, key)
        if pid is not None:
            return current_patient_id(u, pid)
        into = u.scalar(q.KEY_MERGED_INTO, key=key)
        key = str(into) if into else None
    return None


def merge_patient_ids(u: UnitOfWork, surviving_key: str, retired_key: str, now: float) -> str | None:
    """Record that ``retired_key``'s patient is ``surviving_key``'s; return the surviving id.

    The survivor keeps (or gets) its id. A retired key without an id simply maps to it; a
    retired key with an id of its own retires that id: it is recorded as merged into the
    survivor's, every key and every event/trigger row that carried it now carries the survivor's.
    """
    survivor = patient_id_for(u, surviving_key, now)
    if survivor is None or not retired_key or retired_key == surviving_key:
        return survivor
    retired = lookup_patient_id(u, retired_key)
    if retired is None:
        u.run(q.ADOPT, key=retired_key, pid=survivor, now=now)
        return survivor
    if retired == survivor:
        return survivor
    u.run(q.FLATTEN, survivor=survivor, retired=retired)
    u.run(q.RETIRE, survivor=survivor, retired=retired, now=now)
    for stmt in q.REPOINT:
        u.run(stmt, survivor=survivor, retired=retired)
    return survivor


def stamp_unassigned(u: UnitOfWork, now: float) -> int:
    """Give the event and trigger rows written without a patient id theirs; return how many keys.

    Rows written by a replica of the previous release while a rolling upgrade was under way
    (``docs/deploy.md``, *Upgrades*) have a patient key and no id. The service runs this at start
    (an index look-up finds nothing in the usual case); a key merged away is stamped with its
    survivor's id.
    """
    keys = [str(k) for (k,) in u.all(q.UNSTAMPED)]
    for key in keys:
        pid = resolve_patient_id(u, key) or patient_id_for(u, key, now)
        for stmt in q.STAMP:
            u.run(stmt, pid=pid, key=key)
    return len(keys)


def stamp_unassigned_rows(engine: Engine) -> int:
    """:func:`stamp_unassigned` in its own unit of work (the service's start)."""
    import time

    with unit(engine, write=True) as u:
        return stamp_unassigned(u, time.time())


__all__ = ["PREFIX", "new_patient_id", "lookup_patient_id", "patient_id_for", "issue_patient_id", "current_patient_id",
           "resolve_patient_id", "merge_patient_ids", "stamp_unassigned", "stamp_unassigned_rows"]


def keys_of_patient(u: UnitOfWork, patient_id: str) -> list[str]:
    """Every patient key mapped to ``patient_id`` (oldest first); empty for an unknown or merged-away id."""
    return [str(k) for (k,) in u.all(q.KEYS_OF, pid=patient_id)]


def ids_of_keys(u: UnitOfWork, keys: list[str]) -> dict[str, str]:
    """Patient key -> internal id, for the keys careloop has an id for (one query)."""
    if not keys:
        return {}
    return {str(k): str(p) for k, p in u.all(q.IDS_OF, keys=sorted(set(keys)))}
