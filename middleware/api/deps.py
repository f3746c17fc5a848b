"""Shared FastAPI dependencies: the runtime and the operator bearer token."""
from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request

if TYPE_CHECKING:
    from ..service import Runtime


def get_runtime(request: Request) -> "Runtime":
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated["Runtime", Depends(get_runtime)]


def require_token(request: Request) -> None:
    """401 unless the configured API bearer token is presented (no token configured: loopback only)."""
    rt = request.app.state.runtime
    token = rt.settings.api_token
    if not token:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else ""
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


TokenDep = Depends(require_token)
