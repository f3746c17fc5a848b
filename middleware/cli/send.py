"""``careloop send``: an MLLP client that sends HL7v2 files and prints the ACKs.

A file holding an HL7 batch (FHS/BHS ... BTS/FTS) is sent as one frame, as HL7 v2
chapter 2 sends a batch, and answered with one response batch: each ACK in it is
printed (with ``batch_acks: errors`` only the negative ones come back).
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from ..listeners.mllp_framing import EB, SB, frame
from ..normalize.hl7_batch import is_batch
from ..normalize.hl7_peek import decode


def read_message(path: Path) -> bytes:
    """A file's message (or batch) with CR segment ends; a UTF-16/32 file is sent as it is."""
    data = path.read_bytes()
    if data[:4].count(b"\x00") or data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r") + b"\r"


def send_messages(host: str, port: int, payloads: list[bytes], timeout: float = 30.0) -> list[bytes]:
    """Send each message on one connection, waiting for its ACK; return the ACK payloads."""
    acks = []
    with socket.create_connection((host, port), timeout=timeout) as s:
        for p in payloads:
            s.sendall(frame(p))
            buf = b""
            while EB not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed before the ACK")
                buf += chunk
            acks.append(buf[buf.index(SB) + 1 : buf.index(EB)])
    return acks


def ack_lines(ack: bytes) -> list[tuple[str, str]]:
    """(MSA-1 code, MSA segment) of each ACK in a reply (one ACK, or a response batch)."""
    text = decode(ack)[0]
    out = []
    for seg in text.split("\r"):
        if seg.startswith("MSA") and len(seg) > 3:
            fields = seg.split(seg[3])
            out.append((fields[1] if len(fields) > 1 else "?", seg))
    return out


def sample_payloads(shift: bool) -> tuple[list[Path], list[bytes], str | None]:
    """The bundled samples, re-dated relative to now with fresh control ids unless ``shift`` is
    false; with the one line that says so."""
    from datetime import datetime, timezone

    from ..samples import sample_paths
    from ..samples.shift import shift_samples

    paths = list(sample_paths())
    payloads = [read_message(p) for p in paths]
    if not shift:
        return paths, payloads, None
    payloads, ids = shift_samples(payloads, datetime.now(timezone.utc))
    note = (f"samples re-dated relative to now (each appointment's or visit's last message an hour ago, gaps kept) "
            f"with fresh control ids (MSH-10 {ids[0]}..{ids[-1][-2:]}); --as-is sends them unchanged")
    return paths, payloads, note


def cmd_send(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.files]
    payloads: list[bytes] = []
    if args.samples:
        paths, payloads, note = sample_payloads(not args.as_is)
        paths += [Path(p) for p in args.files]
        if note:
            print(note)
    if not paths:
        print("careloop send: give files or --samples", file=sys.stderr)
        return 2
    for p in paths[len(payloads):]:  # the samples are read (and re-dated) already
        try:
            payloads.append(read_message(p))
        except OSError as exc:
            print(f"careloop send: cannot read {p}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    try:
        acks = send_messages(args.host, args.port, payloads)
    except OSError as exc:
        print(f"careloop send: {exc.strerror or exc} ({args.host}:{args.port})", file=sys.stderr)
        return 2
    rc = 0
    for p, payload, a in zip(paths, payloads, acks):
        lines = ack_lines(a)
        if is_batch(payload):
            trailer = next((s for s in decode(a)[0].split("\r") if s.startswith("BTS")), "BTS")
            print(f"{p.name}: batch, {len(lines)} ACK(s) back  {trailer}")
            for code, seg in lines:
                print(f"  {code}  {seg}")
                rc = rc or int(code not in ("AA", "CA"))
            continue
        code, seg = lines[0] if lines else ("?", "")
        print(f"{p.name}: {code}  {seg}")
        if code not in ("AA", "CA"):
            rc = 1
    return rc


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("send", help="send HL7v2 files over MLLP and print the ACKs")
    p.add_argument("files", nargs="*")
    p.add_argument("--samples", action="store_true",
                   help="send the bundled synthetic sample messages, re-dated relative to now with fresh control ids")
    p.add_argument("--as-is", action="store_true", help="with --samples: send them with their own dates and ids")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575)
    p.set_defaults(func=cmd_send)
