"""The response to an HL7 v2 batch (chapter 2, 2.10.3), pure: one response batch per
received batch, ``[FHS] {BHS {ACK} BTS} [FTS]``.

Each response BHS names the batch it answers in BHS-12 (reference batch control id =
the received BHS-11) and carries a new BHS-11; sending and receiving application and
facility are swapped. With ``mode="all"`` every message's ACK is included (in order);
with ``mode="errors"`` only the negative ones, so an empty response batch means every
message was accepted. BTS-1 counts the ACKs in the response batch; BTS-2 reports a
received BTS-1 that did not match. A file (FHS) is answered with a file (FHS-12 = the
received FHS-11, FTS-1 = the number of response batches).
"""
from __future__ import annotations

import itertools
from datetime import datetime, timezone

from ..normalize.hl7_batch import Hl7Batch

_counter = itertools.count(1)


def _clean(value: str) -> str:
    return value if value.isprintable() else "".join(c for c in value if c.isprintable())


def _f(fields: list[str] | None, i: int) -> str:
    """Field ``i`` (FHS-i/BHS-i) as sent, first component only for the HD fields."""
    if fields is None or i >= len(fields):
        return ""
    return _clean(fields[i])


def _header(sid: str, received: list[str] | None, sep: str, stamp: str, comment: str, app: str) -> str:
    ctl = f"CLB{stamp}{next(_counter) % 100000:05d}"
    fields = [
        sid, "^~\\&",
        _f(received, 5) or app, _f(received, 6), _f(received, 3), _f(received, 4),
        stamp, "", "", comment, ctl, _f(received, 11),
    ]
    return sep.join(fields).rstrip(sep)


def build_batch_response(
    batch: Hl7Batch,
    answers: list[list[tuple[str, bytes | None]]],
    *,
    mode: str = "all",
    now: datetime | None = None,
    app: str = "CARELOOP",
) -> bytes:
    """The response batch (or file) for ``batch``; ``answers[i]`` holds (kind, ACK bytes)
    for each message of ``batch.parts[i]``, kind accept | error | reject."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%d%H%M%S")
    sep = batch.field_sep if batch.field_sep and not batch.field_sep.isalnum() else "|"
    out: list[bytes] = []
    per_part = {msg.split(":")[0]: msg for msg in batch.problems if msg.startswith("batch ")}
    file_note = "; ".join(m for m in batch.problems if not m.startswith("batch "))
    if batch.file_header is None and file_note:  # no file header to carry it: the first batch does
        per_part["batch 1"] = "; ".join(x for x in (per_part.get("batch 1", ""), file_note) if x)
    if batch.file_header is not None:
        out.append(_header("FHS", batch.file_header, sep, stamp, file_note[:80], app).encode("utf-8") + b"\r")
    for n, (part, acks) in enumerate(zip(batch.parts, answers), start=1):
        note = per_part.get(f"batch {n}", "")
        out.append(_header("BHS", part.header, sep, stamp, note[:80], app).encode("utf-8") + b"\r")
        kept = [a for kind, a in acks if a is not None and (mode == "all" or kind != "accept")]
        for a in kept:
            out.append(a if a.endswith(b"\r") else a + b"\r")
        out.append(sep.join(["BTS", str(len(kept)), note[:80]]).rstrip(sep).encode("utf-8") + b"\r")
    if batch.file_header is not None:
        out.append(f"FTS{sep}{len(batch.parts)}".encode("utf-8") + b"\r")
    return b"".join(out)
