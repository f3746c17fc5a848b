"""Decide and record one inbound HL7v2 message: the part shared by MLLP and HTTP.

Flow: peek (decode, MSH) -> choose the source -> decide accept / ignore / error / reject
-> build the ACK (:func:`prepare_hl7`, pure) -> store durably (group commit) -> return the
ACK bytes (:func:`answer_hl7`). The MLLP listener calls the two halves around a callback
store; :func:`ingest_hl7` (HTTP) awaits the store between them. Every input
is stored, including rejected and erroneous ones (status ``rejected`` / ``failed``).
"""
from __future__ import annotations

import dataclasses
import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable

import orjson

from ..config.sources import Source, Sources
from ..normalize.hl7_batch import Hl7Batch, is_batch, split_batch
from ..normalize.hl7_peek import Hl7Problem, Peek, peek
from ..normalize.hl7_structure import check_structure
from ..storage.inbox import InboundRecord, InboxWriter, StoreResult
from ..storage.statuses import InboundStatus
from .hl7_ack import build_ack, wants_ack
from . import mllp_framing
from .hl7_batch_ack import build_batch_response

log = logging.getLogger("careloop.ingest")

#: defaults of ``Settings.hl7_max_batch_bytes`` / ``hl7_max_batch_messages`` (see configure_batch_limits)
MAX_BATCH_BYTES = 16_777_216
MAX_BATCH_MESSAGES = 10_000


def configure_batch_limits(max_bytes: int, max_messages: int) -> None:
    """Set the process-wide batch limits (from settings, at startup): the MLLP framer's frame
    limit for batches and the message count, for listeners that do not pass their own."""
    global MAX_BATCH_BYTES, MAX_BATCH_MESSAGES
    MAX_BATCH_BYTES, MAX_BATCH_MESSAGES = max_bytes, max_messages
    mllp_framing.DEFAULT_MAX_BATCH_BYTES = max_bytes


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
    try:
        checked = check_structure(p, source)
    except Exception:  # a defect in a check must not drop the connection: store, answer AE, replay after a fix
        log.exception("structure check failed", extra={"action": "ingest.check_failed", "source": source.name})
        return "error", "failed", [Hl7Problem("207", "the message could not be checked (careloop defect); stored for replay")]
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
    max_batch_bytes: int | None = None,
    max_batch_messages: int | None = None,
) -> IngestAnswer:
    """Store one message (or every message of a batch) durably and return the ACK (or the
    response batch) to send, after the commit."""
    if is_batch(raw):
        bprep = prepare_batch(raw, channel=channel, port=port, sources=sources, max_bytes=max_batch_bytes,
                              max_messages=max_batch_messages)
        env = await writer.store(bprep.envelope)
        results = [list(await asyncio.gather(*(writer.store(p.record) for p in part))) for part in bprep.parts]
        return answer_batch(bprep, results, env)
    prep = prepare_hl7(raw, channel=channel, port=port, sources=sources)
    return answer_hl7(prep, await writer.store(prep.record))


# -- batches (FHS/BHS ... BTS/FTS) ------------------------------------------------

Answered = Callable[[IngestAnswer], None]


@dataclass
class PreparedBatch:
    """A batch split, each message decided, the envelope record built; nothing stored yet."""

    batch: Hl7Batch
    envelope: InboundRecord
    parts: list[list[Prepared]]
    mode: str  # the source's batch_acks: all | errors
    refused: bytes | None = None  # the answer when the batch is refused whole (over a limit)


def prepare_batch(raw: bytes, *, channel: str, port: int | None, sources: Sources,
                  max_bytes: int | None = None, max_messages: int | None = None) -> PreparedBatch:
    """Split a batch and prepare every message (pure, no I/O). The envelope record keeps the
    whole batch's bytes; a batch over a limit is refused whole with one AE naming it."""
    max_bytes = MAX_BATCH_BYTES if max_bytes is None else max_bytes
    max_messages = MAX_BATCH_MESSAGES if max_messages is None else max_messages
    batch = split_batch(raw)
    header = next((p.header for p in batch.parts if p.header), None) or batch.file_header or []
    source = sources.for_hl7(port, (header[3:4] or [""])[0].split("^")[0] or None,
                             (header[4:5] or [""])[0].split("^")[0] or None)
    envelope = InboundRecord(
        source=source.name, channel=channel, raw=raw, sha256=hashlib.sha256(raw).hexdigest(),
        status=InboundStatus.IGNORED, control_id=batch.control_id()[:64] or None,
        message_type="FILE" if batch.file_header is not None else "BATCH",
        meta=orjson.dumps({"batch": {"messages": batch.message_count, "problems": batch.problems}}).decode(),
    )
    limit = None
    if len(raw) > max_bytes:
        limit = f"batch of {len(raw)} bytes exceeds the {max_bytes}-byte batch limit"
    elif batch.message_count > max_messages:
        limit = f"batch of {batch.message_count} messages exceeds the {max_messages}-message batch limit"
    if limit is not None:
        envelope = dataclasses.replace(envelope, status=InboundStatus.FAILED, error=limit + "; nothing processed")
        p = Peek(control_id=_echo_id(batch.control_id()), message_type="ACK")
        refused = encode_ack(build_ack(p, "error", [Hl7Problem("100", limit + "; split it and resend", "BHS", 1)]), p)
        return PreparedBatch(batch, envelope, [], source.hl7.batch_acks, refused)
    parts = [[prepare_hl7(m, channel=channel, port=port, sources=sources) for m in part.messages] for part in batch.parts]
    if batch.problems:
        envelope = dataclasses.replace(envelope, error="; ".join(batch.problems)[:2000])
    return PreparedBatch(batch, envelope, parts, source.hl7.batch_acks)


def _echo_id(value: str) -> str:
    return value if value.isprintable() else ""


def answer_batch(prep: PreparedBatch, results: list[list[StoreResult]], env: StoreResult) -> IngestAnswer:
    """The response batch once every message (and the envelope) has been stored or failed."""
    if prep.refused is not None:
        kind = "error" if env.stored else "reject"
        return IngestAnswer(prep.refused, kind, prep.envelope.status if env.stored else "not-stored")
    answers = [[answer_hl7(p, r) for p, r in zip(part, res)] for part, res in zip(prep.parts, results)]
    body = build_batch_response(prep.batch, [[(a.kind, a.ack) for a in part] for part in answers], mode=prep.mode)
    flat = [a for part in answers for a in part]
    kind = "accept" if all(a.kind == "accept" for a in flat) else ("reject" if any(a.kind == "reject" for a in flat) else "error")
    status = "not-stored" if any(a.status == "not-stored" for a in flat) else "batch"
    return IngestAnswer(body, kind, status)


def submit_batch(prep: PreparedBatch, writer: InboxWriter, answered: Answered) -> None:
    """Queue the envelope and every message; ``answered`` runs once, after all are committed."""
    results: list[list[StoreResult]] = [[StoreResult(stored=False)] * len(part) for part in prep.parts]
    env_result = [StoreResult(stored=False)]
    remaining = [1 + sum(len(part) for part in prep.parts)]

    def finish() -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            answered(answer_batch(prep, results, env_result[0]))

    def env_done(res: StoreResult) -> None:
        env_result[0] = res
        finish()

    writer.submit(prep.envelope, env_done)
    for i, part in enumerate(prep.parts):
        for j, p in enumerate(part):
            def done(res: StoreResult, i: int = i, j: int = j) -> None:
                results[i][j] = res
                finish()

            writer.submit(p.record, done)


def submit_hl7(raw: bytes, *, channel: str, port: int | None, sources: Sources, writer: InboxWriter,
               answered: Answered, max_batch_bytes: int | None = None,
               max_batch_messages: int | None = None) -> None:
    """One received frame or body, a message or a batch: decide, queue for storage, and call
    ``answered`` once with the ACK (or response batch) after the commit. Never raises for
    any bytes (the MLLP listener's entry point)."""
    if is_batch(raw):
        submit_batch(prepare_batch(raw, channel=channel, port=port, sources=sources, max_bytes=max_batch_bytes,
                                   max_messages=max_batch_messages), writer, answered)
        return
    prep = prepare_hl7(raw, channel=channel, port=port, sources=sources)
    writer.submit(prep.record, lambda res: answered(answer_hl7(prep, res)))
