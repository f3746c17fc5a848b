"""Contact keys across secret versions: resolve a key a vendor holds, export old -> new.

A contact key is ``ck_`` + HMAC-SHA256(secret, patient key) (:func:`policy.contact_key`);
it cannot be reversed, so resolving one recomputes it for every known patient key under
each secret still valid for lookups (about 1 µs per patient and version here: a lookup over
a million patients and two versions takes about 2 s). The export recomputes the key of
every patient that was disclosed to a destination (the disclosure audit is never purged)
under both versions, so a destination can re-key its records: no history is lost.
"""
from __future__ import annotations

import csv
from datetime import datetime
from typing import IO, Iterator

from sqlalchemy.engine import Engine

from ..keyring import ContactKeyring
from ..storage.queries import audit as q
from ..storage.sql import unit
from ..config.policy import contact_key

EXPORT_COLUMNS = ("old_key", "new_key")


def disclosed_patients(engine: Engine, destination: str | None = None) -> Iterator[str]:
    """Distinct patient keys disclosed (to ``destination``, or to any), in key order."""
    with unit(engine) as u:
        keys = list(q.disclosed_patients(u, destination or None))
    yield from keys


def _known_patients(engine: Engine) -> Iterator[str]:
    with unit(engine) as u:
        keys = list(q.known_patients(u))
    yield from keys


def resolve(engine: Engine, keyring: ContactKeyring, ck: str, *, now: datetime | None = None) -> tuple[str, str] | None:
    """``(patient key, secret version)`` of contact key ``ck`` under a secret valid for lookups, or None."""
    versions = keyring.for_lookup(now)
    for key in _known_patients(engine):
        for v in versions:
            if contact_key(v.secret, key) == ck:
                return key, v.version
    return None


def export_mapping(engine: Engine, keyring: ContactKeyring, old: str, new: str, out: IO[str], *,
                   destination: str | None = None) -> int:
    """Write CSV ``old_key,new_key`` (pseudonymous keys only) for every disclosed patient; return the row count.

    Raises KeyError when a version is not configured, ValueError when they are the same."""
    if old == new:
        raise ValueError("--from and --to name the same version")
    s_old, s_new = keyring.get(old).secret, keyring.get(new).secret
    w = csv.writer(out, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    n = 0
    for key in disclosed_patients(engine, destination):
        w.writerow((contact_key(s_old, key), contact_key(s_new, key)))
        n += 1
    return n
