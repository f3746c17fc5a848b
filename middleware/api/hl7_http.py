"""HL7v2 over HTTP: ``POST /hl7v2`` with an ER7 body; the response body is the ACK.

A body over ``http_max_hl7_bytes`` is refused whole: 413 with an AE NAK naming the limit
(``api/refusals.py``), never cut and accepted.
"""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..listeners.hl7_ingest import ingest_hl7
from ..normalize.hl7_batch import is_batch
from .body import CappedBody, read_capped
from .deps import TokenDep
from .refusals import BATCH_LIMIT_SETTING, HL7_LIMIT_SETTING, refuse_hl7

router = APIRouter(dependencies=[TokenDep])

ER7 = "x-application/hl7-v2+er7"


@router.post("/hl7v2")
async def post_hl7v2(request: Request) -> Response:
    rt = request.app.state.runtime
    single: int = rt.settings.http_max_hl7_bytes
    batch_limit: int = max(single, rt.settings.hl7_max_batch_bytes)

    def limit_for(start: bytes) -> int:  # an HL7 batch (FHS/BHS) has its own, larger limit
        return batch_limit if is_batch(start) else single

    body = await read_capped(request, batch_limit, narrow=limit_for)
    setting = BATCH_LIMIT_SETTING if is_batch(body.data) else HL7_LIMIT_SETTING
    if body.oversize:
        limit = limit_for(body.data) if body.data else body.limit
        return await refuse_hl7(CappedBody(body.data, True, body.size, limit), sources=rt.sources,
                                writer=rt.writer, setting=setting)
    raw = body.data
    ans = await ingest_hl7(raw, channel="http", port=None, sources=rt.sources, writer=rt.writer,
                           max_batch_bytes=rt.settings.hl7_max_batch_bytes,
                           max_batch_messages=rt.settings.hl7_max_batch_messages)
    status = 503 if ans.status == "not-stored" else 200
    return Response(content=ans.ack or b"", media_type=ER7, status_code=status)
