"""The named queries, by area (see :mod:`middleware.storage.sql`). Importing this package
registers them all."""
from __future__ import annotations

from . import ingest  # noqa: F401
from . import patient_ids  # noqa: F401
