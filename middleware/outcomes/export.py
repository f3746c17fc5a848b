"""Patient-level outcome export for analysts.

De-identified by default: each row has a **per-export random id** (never the internal
patient id, the MRN or a vendor contact key, so two exports cannot be joined), the arm, the
journey and rule-set version, the outcome and whole days to it, and no date finer than the
year. Dates of service make the file a HIPAA **limited data set** (45 CFR 164.514(e)): only
with ``limited_data_set=True`` and a recorded data use agreement reference, and the caller
records the export in the admin audit.
"""
from __future__ import annotations

import csv
import io
import math
import secrets
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from middleware.storage.queries import outcomes as q
from middleware.storage.sql import unit

COLUMNS = ["export_id", "goal", "rule", "journey", "ruleset_version", "experiment", "period", "arm", "outcome",
           "days_to_outcome", "year"]
LDS_COLUMNS = ["anchor_date", "outcome_date"]


class ExportRefused(ValueError):
    pass


def _date(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat() if ts is not None else ""


def export_csv(engine: Engine, goal_id: str, *, limited_data_set: bool = False, dua: str | None = None) -> tuple[str, int]:
    """The CSV text and its row count."""
    if limited_data_set and not (dua and dua.strip()):
        raise ExportRefused("a limited data set needs the data use agreement's reference (--dua)")
    with unit(engine) as u:
        rows = u.all(q.EXPORT.name, goal_id=goal_id)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS + (LDS_COLUMNS if limited_data_set else []))
    for r in rows:
        days = "" if r.elapsed_s is None else str(math.floor(r.elapsed_s / 86400.0))
        year = datetime.fromtimestamp(r.window_opens, UTC).year if r.window_opens is not None else ""
        line = [secrets.token_hex(8), goal_id, r.rule_id, r.journey_id or "", r.ruleset_version or "",
                r.experiment or "", r.period or "", r.arm or "", r.status, days, year]
        if limited_data_set:
            line += [_date(r.window_opens), _date(r.achieved_at)]
        w.writerow(line)
    return buf.getvalue(), len(rows)
