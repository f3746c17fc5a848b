"""The admin audit: one append-only row per admin action, from the API, the CLI or the service.

Who (``actor``: the API token's name, the OS user for the CLI, ``careloop`` for the
service's own retention runs), what (``action``, ``target_kind``/``target_id``: ids, names
or pseudonymous keys, never PHI), why (``reason``), from where (``client``), how it ended
(``outcome``: ok | refused | error), when (``at``) and ``request_id``.

Failed authentications are not one row each (a flood would fill the table): they are
logged and counted per process (``careloop_auth_failures_total``); a row
``auth.throttled`` is written when a client address starts being answered 429, at most
once per address per throttle window.

Append-only: :func:`guard_admin_audit` makes ORM updates and deletes of a row, and bulk
ORM ``UPDATE``/``DELETE`` statements on the table, raise. Database triggers come with
the migrations (issue 9).
"""
from __future__ import annotations

import getpass
import time
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import ORMExecuteState, Session as OrmSession
from sqlmodel import Session, col, select

from ..storage.tables import AdminAudit
from .audit import AppendOnlyError

MAX_PAGE = 1000


def _refuse(*_args: Any) -> None:
    raise AppendOnlyError("the admin audit is append-only: rows are never updated or deleted")


def _refuse_bulk(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and state.bind_mapper is not None \
            and state.bind_mapper.class_ is AdminAudit:
        _refuse()


def guard_admin_audit() -> None:
    """Install (once) ORM hooks that refuse to update or delete admin-audit rows."""
    for name in ("before_update", "before_delete"):
        if not event.contains(AdminAudit, name, _refuse):
            event.listen(AdminAudit, name, _refuse)
    if not event.contains(OrmSession, "do_orm_execute", _refuse_bulk):
        event.listen(OrmSession, "do_orm_execute", _refuse_bulk)


def cli_actor() -> str:
    """The OS user running a CLI command (``unknown`` when the platform cannot tell)."""
    try:
        return getpass.getuser()[:100]
    except Exception:
        return "unknown"


def record(engine: Engine, *, actor: str, channel: str, action: str, outcome: str = "ok",
           target_kind: str | None = None, target_id: str | None = None, reason: str | None = None,
           client: str | None = None, role: str | None = None, request_id: str | None = None,
           detail: dict[str, Any] | None = None, at: float | None = None) -> int:
    """Append one row and commit; return its id."""
    guard_admin_audit()
    row = AdminAudit(
        at=time.time() if at is None else at, actor=actor[:100], role=role, channel=channel, action=action[:64],
        target_kind=target_kind, target_id=None if target_id is None else str(target_id)[:300],
        reason=None if reason is None else reason[:200], client=None if client is None else client[:64],
        outcome=outcome, request_id=request_id, detail=orjson.dumps(detail).decode() if detail else None,
    )
    with Session(engine) as s:
        s.add(row)
        s.commit()
        s.refresh(row)
        return int(row.id or 0)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def row_json(r: AdminAudit) -> dict[str, Any]:
    return {"id": r.id, "at": _iso(r.at), "actor": r.actor, "role": r.role, "channel": r.channel, "action": r.action,
            "target_kind": r.target_kind, "target_id": r.target_id, "reason": r.reason, "client": r.client,
            "outcome": r.outcome, "request_id": r.request_id, "detail": orjson.loads(r.detail) if r.detail else None}


def query(engine: Engine, *, action: str | None = None, actor: str | None = None, since: float | None = None,
          before_id: int | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first, keyset-paginated: (rows, ``before_id`` for the next page or None)."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = select(AdminAudit).order_by(col(AdminAudit.id).desc()).limit(limit + 1)
    if action:
        stmt = stmt.where(AdminAudit.action == action)
    if actor:
        stmt = stmt.where(AdminAudit.actor == actor)
    if since is not None:
        stmt = stmt.where(col(AdminAudit.at) >= since)
    if before_id is not None:
        stmt = stmt.where(col(AdminAudit.id) < before_id)
    with Session(engine) as s:
        rows = list(s.exec(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    return [row_json(r) for r in rows], (rows[-1].id if more and rows else None)


def parse_since(value: str) -> float:
    """``since`` as epoch seconds: an ISO 8601 date or date-time (UTC when no offset) or a number.

    Raises ValueError with a one-line message otherwise.
    """
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"since: expected an ISO 8601 date/time or epoch seconds, got {value!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
