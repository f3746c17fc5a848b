"""HL7v2 over HTTP: ``POST /hl7v2`` with an ER7 body; the response body is the ACK."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..listeners.hl7_ingest import ingest_hl7
from ..normalize.hl7_batch import is_batch
from .deps import TokenDep

router = APIRouter(dependencies=[TokenDep])

ER7 = "x-application/hl7-v2+er7"


@router.post("/hl7v2")
async def post_hl7v2(request: Request) -> Response:
    rt = request.app.state.runtime
    raw = await request.body()
    # an HL7 batch (FHS/BHS) has its own limit, separate from the one for a single message
    limit = rt.settings.hl7_max_batch_bytes if is_batch(raw) else rt.settings.mllp_max_message_bytes
    if len(raw) > limit:
        raw = raw[:limit]
    ans = await ingest_hl7(raw, channel="http", port=None, sources=rt.sources, writer=rt.writer)
    status = 503 if ans.status == "not-stored" else 200
    return Response(content=ans.ack or b"", media_type=ER7, status_code=status)
