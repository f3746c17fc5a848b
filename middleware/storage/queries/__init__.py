"""The named queries, by area (see :mod:`middleware.storage.sql`). Importing this package
registers them all."""
from __future__ import annotations

from .. import tables  # noqa: F401  (the metadata the queries are built against)
from . import ingest, outcomes  # noqa: F401
