"""Decide and record one inbound HL7v2 message: the part shared by MLLP and HTTP.

Flow: peek (decode, MSH) -> choose the source -> decide accept / ignore / error / reject
-> build the ACK (:func:`prepare_hl7`, pure) -> store durably (group commit) -> return the
ACK bytes (:func:`answer_hl7`). The MLLP listener calls the two halves around a callback
store; :func:`ingest_hl7` (HTTP) awaits the store between them. Every input
is stored, including rejected and erroneous ones (status ``rejected`` / ``failed``).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from ..config.sources import Source, Sources
from ..normalize.hl7_peek import Hl7Problem, Peek, peek
from ..normalize.hl7_structure import check_structure
from ..storage.inbox import InboundRecord, InboxWriter, StoreResult
from .hl7_ack import build_ack, wants_ack

log = logging.getLogger("careloop.ingest")


@dataclass
class IngestAnswer:
    ack: bytes | None  # None: enhanced mode asked for no accept ACK
    kind: str  # accept | error | reject
    status: str  # stored status
    duplicate: bool = False


def decide(p: Peek, source: Source) -> tuple[str, str, list[Hl7Problem]]:
    """Return (kind, stored status, problems) for a peeked message (pure)."""
    errors = [x for x in p.problems if x.severity == "E"]
    warnings = [x for x in p.problems if x.severity != "E"]
    if errors:
        return "error", "failed", errors + warnings
    h = source.hl7
    if h.processing_ids and p.processing_id and p.processing_id not in h.processing_ids:
        return "reject", "rejected", [Hl7Problem("202", f"processing id '{p.processing_id}' is not accepted", "MSH", 1, 11)]
    if h.versions and p.version not in h.versions:
        return "reject", "rejected", [Hl7Problem("203", f"HL7 version '{p.version}' is not accepted", "MSH", 1, 12)]
    if p.message_type not in h.accept and p.message_type.split("^")[0] not in h.accept:
        # stored and acknowledged, but not processed: answering AR would stall the sender's queue
        return "accept", "ignored", warnings
    checked = check_structure(p, source)
    if checked.errors:
        return "error", "failed", checked.errors + warnings + checked.warnings
    if not checked.mapped:
        return "accept", "ignored", warnings + checked.warnings
    return "accept", "received", warnings + checked.warnings


def encode_ack(text: str, p: Peek) -> bytes:
    """The ACK in the message's codec; UTF-8 when that cannot encode it or when the
    encoded bytes would contain an MLLP block character (wide codecs can)."""
    codec = p.codec or "utf-8"
    try:
        out = text.encode(codec)
    except (UnicodeError, LookupError):
        return text.encode("utf-8", errors="replace")
    if codec != "utf-8" and (b"\x1c" in out or b"\x0b" in out):
        return text.encode("utf-8", errors="replace")
    return out


@dataclass
class Prepared:
    """One message decided and its record built, not yet stored (see :func:`prepare_hl7`)."""

    record: InboundRecord
    peek: Peek
    kind: str
    status: str
    ack: bytes
    source: str


def prepare_hl7(raw: bytes, *, channel: str, port: int | None, sources: Sources) -> Prepared:
    """Peek, choose the source, decide and build the ACK and the record to store (pure, no I/O)."""
    first = peek(raw, "cp1252")
    source = sources.for_hl7(port, first.sending_app or None, first.sending_facility or None)
    p = first if source.hl7.charset_fallback == "cp1252" else peek(raw, source.hl7.charset_fallback)
    kind, status, problems = decide(p, source)
    ack = encode_ack(build_ack(p, kind, problems), p)
    dedup = f"{p.sending_app}|{p.sending_facility}|{p.control_id}" if p.control_id else None
    error = "; ".join(f"{x.code} {x.text}" for x in problems if x.severity == "E") if problems else None
    rec = InboundRecord(
        source=source.name,
        channel=channel,
        raw=raw,
        sha256=hashlib.sha256(raw).hexdigest(),
        status=status,
        dedup_key=dedup,
        control_id=p.control_id or None,
        message_type=p.message_type or None,
        error=error or None,
        ack=ack,
    )
    return Prepared(rec, p, kind, status, ack, source.name)


def answer_hl7(prep: Prepared, res: StoreResult) -> IngestAnswer:
    """The answer to send once the store finished (committed, duplicate or failed)."""
    if not res.stored:
        log.warning("store failed", extra={"action": "ingest.store_failed", "source": prep.source})
        reject = [Hl7Problem("207", "message could not be stored; resend", "MSH", 1)]
        p = prep.peek
        return IngestAnswer(encode_ack(build_ack(p, "reject", reject), p), "reject", "not-stored")
    if res.duplicate:
        log.info("duplicate", extra={"action": "ingest.duplicate", "source": prep.source})
        return IngestAnswer(res.previous_ack or prep.ack, prep.kind, "duplicate", duplicate=True)
    return IngestAnswer(prep.ack if wants_ack(prep.peek, prep.kind) else None, prep.kind, prep.status)


async def ingest_hl7(
    raw: bytes,
    *,
    channel: str,
    port: int | None,
    sources: Sources,
    writer: InboxWriter,
) -> IngestAnswer:
    """Store one message durably and return the ACK to send (after the commit)."""
    prep = prepare_hl7(raw, channel=channel, port=port, sources=sources)
    return answer_hl7(prep, await writer.store(prep.record))
