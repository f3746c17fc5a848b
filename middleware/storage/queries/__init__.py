"""The named queries, by area (see :mod:`middleware.storage.sql`). Importing this package
registers them all. Each area module also offers small functions that run its statements in a
unit of work and return frozen, typed records: code outside ``storage/`` writes no SQL."""
from __future__ import annotations

from . import admin, admin_audit, audit, delivery, ingest, kv, metrics, operator, privacy, retention, scheduler  # noqa: F401
