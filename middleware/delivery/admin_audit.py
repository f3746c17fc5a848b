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
ORM ``UPDATE``/``DELETE`` statements on the table, raise; the database refuses them from any
client (triggers: ``storage/append_only.py``).
"""
from __future__ import annotations

import getpass
import time
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy.engine import Engine

from ..storage.append_only import guard_admin_audit
from ..storage.queries import admin_audit as q
from ..storage.sql import unit

MAX_PAGE = 1000
__all__ = ["MAX_PAGE", "cli_actor", "guard_admin_audit", "parse_since", "query", "record", "row_json"]


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
    row = {
        "at": time.time() if at is None else at, "actor": actor[:100], "role": role, "channel": channel,
        "action": action[:64], "target_kind": target_kind, "target_id": None if target_id is None else str(target_id)[:300],
        "reason": None if reason is None else reason[:200], "client": None if client is None else client[:64],
        "outcome": outcome, "request_id": request_id, "detail": orjson.dumps(detail).decode() if detail else None,
    }
    with unit(engine, write=True) as u:
        return q.add(u, row)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def row_json(r: q.AdminAuditRecord) -> dict[str, Any]:
    return {"id": r.id, "at": _iso(r.at), "actor": r.actor, "role": r.role, "channel": r.channel, "action": r.action,
            "target_kind": r.target_kind, "target_id": r.target_id, "reason": r.reason, "client": r.client,
            "outcome": r.outcome, "request_id": r.request_id, "detail": orjson.loads(r.detail) if r.detail else None}


def query(engine: Engine, *, action: str | None = None, actor: str | None = None, since: float | None = None,
          before_id: int | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first, keyset-paginated: (rows, ``before_id`` for the next page or None)."""
    limit = max(1, min(limit, MAX_PAGE))
    with unit(engine) as u:
        rows = q.page(u, action=action or None, actor=actor or None, since=since, before_id=before_id, limit=limit + 1)
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
