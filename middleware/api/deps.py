"""Shared FastAPI dependencies: the runtime, the authenticated caller, audited admin actions."""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Iterator

from fastapi import Depends, HTTPException, Request

from .authn import Caller, authenticate, request_id

if TYPE_CHECKING:
    from ..service import Runtime


def get_runtime(request: Request) -> "Runtime":
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated["Runtime", Depends(get_runtime)]


def require_token(request: Request) -> Caller:
    """401 unless a configured API bearer token is presented (no token configured: loopback only);
    429 while the caller's address is throttled after failed authentications."""
    return authenticate(request)


TokenDep = Depends(require_token)

REASON_HEADER = "x-careloop-reason"


def pseudonym(request: Request, patient_key: str | None) -> str | None:
    """A patient key as the admin audit records it: the contact key under the current secret
    (``careloop contact-keys resolve`` maps it back while that secret is valid), never the MRN."""
    from ..config.policy import contact_key
    from ..keyring import contact_keyring

    if not patient_key:
        return None
    return contact_key(contact_keyring(request.app.state.runtime.settings).current.secret, patient_key)


class Audited:
    """One admin action being recorded; set ``target_id`` / ``detail`` inside the block."""

    def __init__(self, target_kind: str | None, target_id: str | None) -> None:
        self.target_kind = target_kind
        self.target_id = target_id
        self.detail: dict[str, Any] = {}


@contextmanager
def audited(request: Request, action: str, target_kind: str | None = None,
            target_id: object = None) -> Iterator[Audited]:
    """Write an admin-audit row for the block: ``ok``, ``refused`` (an HTTP 4xx) or ``error``.

    The reason is the ``X-Careloop-Reason`` header (first 200 characters)."""
    from ..delivery.admin_audit import record

    a = Audited(target_kind, None if target_id is None else str(target_id))
    outcome = "ok"
    try:
        yield a
    except HTTPException as exc:
        outcome = "refused" if exc.status_code < 500 else "error"
        a.detail.setdefault("status", exc.status_code)
        raise
    except Exception:
        outcome = "error"
        raise
    finally:
        caller: Caller | None = getattr(request.state, "caller", None)
        record(request.app.state.runtime.engine, actor=caller.actor if caller else "unknown", channel="api",
               action=action, outcome=outcome, target_kind=a.target_kind, target_id=a.target_id,
               reason=request.headers.get(REASON_HEADER) or None,
               client=request.client.host if request.client else None, request_id=request_id(request),
               detail=a.detail or None)
