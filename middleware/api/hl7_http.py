"""HL7v2 over HTTP: ``POST /hl7v2`` with an ER7 body; the response body is the ACK.

A body over ``http_max_hl7_bytes`` is refused whole: 413 with an AE NAK naming the limit
(``api/refusals.py``), never cut and accepted.
"""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..listeners.hl7_ingest import ingest_hl7
from .body import read_capped
from .deps import TokenDep
from .refusals import refuse_hl7

router = APIRouter(dependencies=[TokenDep])

ER7 = "x-application/hl7-v2+er7"


@router.post("/hl7v2")
async def post_hl7v2(request: Request) -> Response:
    rt = request.app.state.runtime
    body = await read_capped(request, rt.settings.http_max_hl7_bytes)
    if body.oversize:
        return await refuse_hl7(body, sources=rt.sources, writer=rt.writer)
    raw = body.data
    ans = await ingest_hl7(raw, channel="http", port=None, sources=rt.sources, writer=rt.writer)
    status = 503 if ans.status == "not-stored" else 200
    return Response(content=ans.ack or b"", media_type=ER7, status_code=status)
