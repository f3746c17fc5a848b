"""The admin audit (append-only; the database refuses updates and deletes): append a row, page
through rows newest first with optional filters."""
from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import Float, Integer, String, cast, insert, or_, select

from ..sql import UnitOfWork, param, query
from ._tables import ADMIN_AUDIT

_A = ADMIN_AUDIT.c
COLUMNS = ("at", "actor", "role", "channel", "action", "target_kind", "target_id", "reason", "client", "outcome",
           "request_id", "detail")


class AdminAuditRecord(NamedTuple):
    id: int
    at: float
    actor: str
    role: str | None
    channel: str
    action: str
    target_kind: str | None
    target_id: str | None
    reason: str | None
    client: str | None
    outcome: str
    request_id: str | None
    detail: str | None


query("admin_audit.add", insert(ADMIN_AUDIT).values({c: param(c) for c in COLUMNS}).returning(_A.id))
query("admin_audit.page",
      select(_A.id, *(getattr(_A, c) for c in COLUMNS))
      .where(or_(cast(param("action"), String).is_(None), _A.action == param("action")),
             or_(cast(param("actor"), String).is_(None), _A.actor == param("actor")),
             or_(cast(param("since"), Float).is_(None), _A.at >= param("since")),
             or_(cast(param("before_id"), Integer).is_(None), _A.id < param("before_id")))
      .order_by(_A.id.desc()).limit(param("limit")), AdminAuditRecord)


def add(u: UnitOfWork, row: dict[str, Any]) -> int:
    """Append ``row`` (every column of :data:`COLUMNS`); its id."""
    return int(u.scalar("admin_audit.add", **row))


def page(u: UnitOfWork, *, action: str | None, actor: str | None, since: float | None, before_id: int | None,
         limit: int) -> list[AdminAuditRecord]:
    rows: list[AdminAuditRecord] = u.all("admin_audit.page", action=action, actor=actor, since=since,
                                         before_id=before_id, limit=limit)
    return rows
