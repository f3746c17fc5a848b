"""TLS for the MLLP listener: a server context rebuilt when its files change, and a
memory-BIO session per connection.

The session runs inside the listener's own :class:`asyncio.Protocol` (not the event loop's
TLS transport) so that a PROXY protocol header can precede the handshake, the handshake
runs under the listener's frame deadline, and both event loops (asyncio, uvloop) behave
the same. Certificates are re-read without a restart: :meth:`TlsContextSource.context` checks
the files' size and modification time on every new connection and builds a new context
when they changed; a context that fails to build (a half-written key) keeps the last good one.
"""
from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config.listeners import ListenerTls, build_server_context as build_context

log = logging.getLogger("careloop.mllp")


class TlsError(Exception):
    """The TLS session failed (handshake refused, bad record); the connection is closed."""


def files_stamp(paths: Iterable[Path | str | None]) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime) of each file given (a missing one: zeros): changes when a file is replaced or rewritten."""
    out = []
    for path in paths:
        if path is None:
            continue
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


def _stamp(cfg: ListenerTls) -> tuple[tuple[int, int, int], ...]:
    return files_stamp((cfg.cert_file, cfg.key_file, cfg.client_ca_file))


class TlsContextSource:
    """The current server context for one listener; rebuilt when its files change on disk."""

    def __init__(self, cfg: ListenerTls) -> None:
        self.cfg = cfg
        self._stamp = _stamp(cfg)
        self._ctx = build_context(cfg)  # a listener does not start with unusable certificates
        self.reloads = 0

    def context(self) -> ssl.SSLContext:
        stamp = _stamp(self.cfg)
        if stamp != self._stamp:
            try:
                self._ctx = build_context(self.cfg)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.warning("tls reload failed; keeping the previous certificate",
                            extra={"action": "mllp.tls_reload_failed", "error_type": type(exc).__name__})
            else:
                self._stamp = stamp
                self.reloads += 1
                log.info("tls certificate reloaded", extra={"action": "mllp.tls_reloaded"})
        return self._ctx


@dataclass
class TlsOutput:
    plaintext: bytes  # decrypted application data
    wire: bytes  # bytes to send to the peer (handshake, alerts, tickets)
    closed: bool = False  # the peer sent close_notify


class TlsSession:
    """Server side of one TLS connection over memory BIOs."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.established = False

    def receive(self, data: bytes) -> TlsOutput:
        """Feed bytes from the peer; raises :class:`TlsError` when the session fails."""
        self._in.write(data)
        try:
            if not self.established:
                try:
                    self._obj.do_handshake()
                except ssl.SSLWantReadError:
                    return TlsOutput(b"", self._out.read())
                self.established = True
            return self._read()
        except ssl.SSLError as exc:
            raise TlsError(exc.reason or type(exc).__name__) from exc

    def _read(self) -> TlsOutput:
        chunks: list[bytes] = []
        closed = False
        while True:
            try:
                chunk = self._obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
        return TlsOutput(b"".join(chunks), self._out.read(), closed)

    def send(self, data: bytes) -> bytes:
        """Encrypt application data; return the bytes to write."""
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise TlsError(exc.reason or type(exc).__name__) from exc
        return self._out.read()

    def pending_wire(self) -> bytes:
        return self._out.read()

    def peer_names(self) -> list[str]:
        """The verified client certificate's subject CN and DNS names (empty without one)."""
        cert = self._obj.getpeercert()
        if not cert:
            return []
        names: list[str] = []
        for rdn in cert.get("subject", ()):
            names += [str(attr[1]) for attr in rdn if attr[0] == "commonName"]
        names += [str(alt[1]) for alt in cert.get("subjectAltName", ()) if alt[0] == "DNS"]
        return names

    def version(self) -> str | None:
        return self._obj.version()
