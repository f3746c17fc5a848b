"""Which FHIR server a sandbox careloop database belongs to, and what happens when it changes.

The java sandbox keeps HAPI's data in memory, so every ``careloop sandbox up`` is a new,
empty server that reuses the same resource ids (``Appointment/sbx-appt-0001`` is version 1
again, with a new ``lastUpdated``). What careloop stored about the previous server (applied
versions, events, high-water marks, subscription counters) says nothing true about the new
one. The database therefore records its server in the ``kv`` table (``sandbox.server``:
``run:<run id>`` of ``careloop sandbox up``, or ``url:<base>`` for ``--fhir-url``) and
:func:`claim` decides before ``seed`` or ``scenario`` touch it:

* same server, or a database that records none: use it as it is (seeding again is a no-op
  for versions already applied);
* another server, and the database is the sandbox's own (``.careloop/sandbox/careloop.db``):
  move it aside to ``careloop.<old run id>.db`` and start a fresh one;
* another server, and the database was given with ``--database-url``: refuse (careloop does
  not delete state it did not create).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from ..storage.db import init_db, make_engine
from ..storage.queries import kv
from ..storage.sql import unit

SERVER_KEY = "sandbox.server"


class ServerMismatch(RuntimeError):
    """The database holds careloop state of another FHIR server and may not be moved aside."""


def identity(run_id: str | None, base_url: str) -> str:
    """``run:<id>`` for a sandbox this checkout started, else ``url:<base>``."""
    return f"run:{run_id}" if run_id else f"url:{base_url.rstrip('/')}"


def _sqlite_path(database_url: str) -> Path | None:
    if not database_url.startswith("sqlite:///"):
        return None
    return Path(database_url[len("sqlite:///"):])


def recorded(database_url: str) -> str | None:
    """The server identity the database records, or None (new database, or none recorded)."""
    path = _sqlite_path(database_url)
    if path is not None and not path.exists():
        return None
    engine = make_engine(database_url)
    try:
        init_db(engine)
        with unit(engine) as u:
            value = kv.get_json(u, SERVER_KEY)
    finally:
        engine.dispose()
    return str(value["id"]) if value and value.get("id") else None


def record(database_url: str, ident: str) -> None:
    """Write ``ident`` as the database's server."""
    engine = make_engine(database_url)
    try:
        init_db(engine)
        with unit(engine, write=True) as u:
            kv.put_json(u, SERVER_KEY, {"id": ident, "at": time.time()}, time.time())
    finally:
        engine.dispose()


def claim(database_url: str, ident: str, *, own_database: bool) -> str | None:
    """Make ``database_url`` the database of server ``ident`` (see the module docstring).

    Returns a sentence for the user when the old database was moved aside, else None.
    Raises :class:`ServerMismatch` for a foreign server in a database given explicitly.
    """
    old = recorded(database_url)
    if old is not None and old != ident:
        path = _sqlite_path(database_url)
        if not own_database or path is None:
            raise ServerMismatch(f"{database_url.split('@')[-1]} holds careloop state of another FHIR server ({old}); "
                                 "give a fresh --database-url for this one")
        kind, _, value = old.partition(":")
        tag = value[:12] if kind == "run" else hashlib.sha256(value.encode()).hexdigest()[:12]
        aside = path.with_name(f"{path.stem}.{tag}{path.suffix}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(path) + suffix)
            if src.exists():
                src.replace(Path(str(aside) + suffix))
        record(database_url, ident)
        return (f"the sandbox database held careloop state of an earlier sandbox ({old}); "
                f"moved it to {aside} and started a fresh one for this server")
    if old is None:
        record(database_url, ident)
    return None
