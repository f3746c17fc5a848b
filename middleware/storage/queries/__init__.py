"""The named queries, by area (see :mod:`middleware.storage.sql`). Importing this package
registers them all. Each area module also offers small functions that run its statements in a
unit of work and return frozen, typed records: code outside ``storage/`` writes no SQL."""
from __future__ import annotations

from .. import tables  # noqa: F401  (the metadata the queries are built against)
from . import (admin, admin_audit, audit, console_sessions, delivery, dryrun, ingest, kv, metrics, operator, outcomes,  # noqa: F401
               patient_ids, privacy, replay, retention, rollups, scheduler, timeline)
