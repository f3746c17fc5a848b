"""HTTPS for the console (and the API on the same port): the console's cookies are ``Secure``,
so careloop either speaks TLS itself or sits behind a TLS-terminating proxy it trusts.

- :class:`ReloadingTls`: the server's :class:`ssl.SSLContext` from ``CARELOOP_TLS_CERT_FILE`` /
  ``CARELOOP_TLS_KEY_FILE``. :meth:`ReloadingTls.watch` checks the files' inode, size and
  modification time every few seconds and, when they changed, loads the new chain into the *live*
  context (``load_cert_chain``), so the next handshake presents the renewed certificate without a
  restart; connections already open keep theirs. A pair that fails to load (a key written after
  its certificate) keeps the previous one until both files agree.
- :func:`proxy_options`: uvicorn's ``X-Forwarded-For`` / ``X-Forwarded-Proto`` handling, on only
  for the addresses (or networks) of ``CARELOOP_TRUSTED_PROXIES``; by default nobody's forwarded
  headers are believed (uvicorn would otherwise trust loopback).
- :func:`plain_http_refusal`: why ``serve`` must not listen beyond loopback in clear text.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from pathlib import Path
from typing import Any

from ..listeners.mllp_tls import files_stamp

log = logging.getLogger("careloop.https")

#: How often the certificate files are checked for a change (seconds).
WATCH_EVERY_S = 2.0




class ReloadingTls:
    """One server context for the HTTP port, its certificate chain re-read when the files change."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        self._stamp = files_stamp((cert_file, key_file))
        self.context.load_cert_chain(str(cert_file), str(key_file))  # unusable files: serve does not start
        self.reloads = 0

    def check(self) -> bool:
        """Load the files again if they changed; True when the live context now holds the new chain."""
        stamp = files_stamp((self.cert_file, self.key_file))
        if stamp == self._stamp:
            return False
        try:
            self.context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("https certificate reload failed; keeping the previous one",
                        extra={"action": "https.tls_reload_failed", "error_type": type(exc).__name__})
            return False
        self._stamp = stamp
        self.reloads += 1
        log.info("https certificate reloaded", extra={"action": "https.tls_reloaded"})
        return True

    async def watch(self, every_s: float = WATCH_EVERY_S) -> None:
        """Check the files every ``every_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            await asyncio.to_thread(self.check)


def trusted_proxies(value: str | None) -> list[str]:
    """The addresses or networks of ``CARELOOP_TRUSTED_PROXIES`` (comma-separated); ValueError names a bad one."""
    out: list[str] = []
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"CARELOOP_TRUSTED_PROXIES: {part!r} is not an IP address or network") from None
        out.append(part)
    return out


def proxy_options(value: str | None) -> dict[str, Any]:
    """uvicorn ``Config`` options: forwarded headers believed only from the configured proxies."""
    proxies = trusted_proxies(value)
    if not proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": proxies}


def plain_http_refusal(host: str, loopback: bool, cert_file: Path | None, key_file: Path | None,
                       proxies: str | None, allow_plain: bool = False) -> str | None:
    """Why serving HTTP on ``host`` must be refused, or None. Beyond loopback the console's
    ``Secure`` cookies and every password need TLS: careloop's own or a trusted proxy's."""
    if (cert_file is None) != (key_file is None):
        return "set both CARELOOP_TLS_CERT_FILE and CARELOOP_TLS_KEY_FILE (or neither)"
    for p in (cert_file, key_file):
        if p is not None and not p.is_file():
            return f"TLS file {p} does not exist"
    try:
        trusted = trusted_proxies(proxies)
    except ValueError as exc:
        return str(exc)
    if loopback or cert_file is not None or trusted or allow_plain:
        return None
    return (f"refusing to serve plain HTTP on {host} (beyond loopback): set CARELOOP_TLS_CERT_FILE and "
            "CARELOOP_TLS_KEY_FILE, or CARELOOP_TRUSTED_PROXIES for a TLS-terminating proxy (or, on a network you "
            "control, CARELOOP_ALLOW_PLAIN_HTTP=true)")
