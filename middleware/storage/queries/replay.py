"""Queries of ``careloop reprocess``'s plan: what the replay created, moved and cancelled."""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import func, select

from ..sql import any_of, query
from ._tables import TRIGGER

_T = TRIGGER.c


class PlanRow(NamedTuple):
    id: int
    rule_id: str
    event_id: int | None
    patient_key: str | None
    due_at: float
    status: str
    reason: str | None
    destinations: str


PLAN_ROWS = query("replay.plan_rows", select(_T.id, _T.rule_id, _T.event_id, _T.patient_key, _T.due_at, _T.status,
                                             _T.reason, _T.destinations).where(any_of(_T.id, "ids")), PlanRow)
MAX_TRIGGER_ID = query("replay.max_trigger_id", select(func.coalesce(func.max(_T.id), 0)))
