"""``GET /api/contact-keys/{key}``: the patient a contact key stands for, under any secret
version still valid for lookups (a STOP reply or unsubscribe a vendor sends back)."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from ..delivery.contact_keys import resolve
from ..keyring import contact_keyring
from .deps import TokenDep

router = APIRouter(dependencies=[TokenDep])


@router.get("/api/contact-keys/{key}")
async def contact_key_lookup(request: Request, key: str) -> dict[str, Any]:
    rt = request.app.state.runtime
    found = await asyncio.to_thread(resolve, rt.engine, contact_keyring(rt.settings), key)
    if found is None:
        raise HTTPException(404, "no known patient has this key under a secret valid for lookups")
    return {"contact_key": key, "patient_key": found[0], "version": found[1]}
