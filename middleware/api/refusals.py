"""Refused HTTP bodies: the 413 answers and the stored record of what was refused.

An oversize body is never truncated and accepted. It is answered 413 (``/hl7v2``: an HL7
NAK, AE with an ERR naming the limit and MSA-2 = MSH-10 when the kept prefix has it;
``/fhir/{source}``: an OperationOutcome ``too-costly``) and a prefix of it is stored as a
``failed`` inbound message whose error names the limit, so it can be inspected.
"""
from __future__ import annotations

import hashlib
import logging

from fastapi import Response

from ..config.sources import Sources
from ..listeners.hl7_ack import build_ack
from ..listeners.hl7_ingest import encode_ack
from ..normalize.hl7_peek import Hl7Problem, Peek, peek
from ..storage.inbox import InboundRecord, InboxWriter
from .body import CLOSE, CappedBody

log = logging.getLogger("careloop.http.refused")

ER7 = "x-application/hl7-v2+er7"
HL7_LIMIT_SETTING = "CARELOOP_HTTP_MAX_HL7_BYTES"
BATCH_LIMIT_SETTING = "CARELOOP_HL7_MAX_BATCH_BYTES"
FHIR_LIMIT_SETTING = "CARELOOP_HTTP_MAX_FHIR_BYTES"


def _safe_peek(prefix: bytes) -> Peek:
    try:
        return peek(prefix)
    except Exception:  # a prefix that peek cannot read still gets a NAK (without MSA-2)
        return Peek()


async def refuse_hl7(body: CappedBody, *, sources: Sources, writer: InboxWriter,
                     setting: str = HL7_LIMIT_SETTING) -> Response:
    """413 with an AE NAK naming the limit; the prefix is stored as a failed message."""
    reason = body.reason(setting)
    p = _safe_peek(body.data)
    ack = encode_ack(build_ack(p, "error", [Hl7Problem("100", reason, "MSH", 1)]), p)
    source = sources.for_hl7(None, p.sending_app or None, p.sending_facility or None)
    rec = InboundRecord(
        source=source.name, channel="http", raw=body.data, sha256=hashlib.sha256(body.data).hexdigest(),
        status="failed", error=reason, ack=ack, control_id=p.control_id or None,
        message_type=(p.message_type or None) and p.message_type[:64],
    )
    res = await writer.store(rec)
    log.warning("hl7 body refused", extra={"action": "http.hl7_oversize", "source": source.name,
                                           "size": body.size, "limit": body.limit, "stored": res.stored})
    return Response(content=ack, media_type=ER7, status_code=413, headers=CLOSE)
