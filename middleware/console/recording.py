"""Writing a console action to the admin audit: who (the signed-in viewer and their roles), what,
on which target (ids, names or pseudonymous keys, never an MRN), why (the form's reason field),
from where, and how it ended. One helper so every page records actions the same way."""
from __future__ import annotations

from typing import Any

from fastapi import Request

from ..delivery.admin_audit import record
from . import access as a


def reason_of(value: str | None) -> str | None:
    """The form's reason, trimmed (the audit keeps 200 characters); None when blank."""
    text = (value or "").strip()
    return text[:200] or None


def audit_action(request: Request, viewer: a.Viewer, action: str, *, target_kind: str | None = None,
                 target_id: object = None, reason: str | None = None, outcome: str = "ok",
                 detail: dict[str, Any] | None = None) -> int:
    """Append one ``channel=console`` row for ``viewer``'s action; return its id."""
    return record(request.app.state.runtime.engine, actor=viewer.name, role=viewer.role_label, channel="console",
                  action=action, outcome=outcome, target_kind=target_kind,
                  target_id=None if target_id is None else str(target_id), reason=reason_of(reason),
                  client=request.client.host if request.client else None, detail=detail)
