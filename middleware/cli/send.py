"""``careloop send``: an MLLP client that sends HL7v2 files and prints the ACKs."""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from ..listeners.mllp_framing import EB, SB, frame


def read_message(path: Path) -> bytes:
    data = path.read_bytes()
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


def cmd_send(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.files]
    if args.samples:
        from ..samples import sample_paths

        paths = list(sample_paths()) + paths
    if not paths:
        print("careloop send: give files or --samples", file=sys.stderr)
        return 2
    acks = send_messages(args.host, args.port, [read_message(p) for p in paths])
    rc = 0
    for p, a in zip(paths, acks):
        text = a.decode("utf-8", "replace")
        msa = next((seg for seg in text.split("\r") if seg.startswith("MSA")), "")
        code = msa.split("|")[1] if "|" in msa else "?"
        print(f"{p.name}: {code}  {msa}")
        if code not in ("AA", "CA"):
            rc = 1
    return rc


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("send", help="send HL7v2 files over MLLP and print the ACKs")
    p.add_argument("files", nargs="*")
    p.add_argument("--samples", action="store_true", help="send the bundled synthetic sample messages")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575)
    p.set_defaults(func=cmd_send)
