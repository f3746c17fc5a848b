"""MLLP listener settings (``listeners:`` in ``mappings/sources.yaml``): limits, TLS, PROXY protocol.

Every MLLP port careloop listens on has one :class:`MllpListenerConfig`; a port without an
entry (the default ``CARELOOP_MLLP_PORT``, or a port a source owns) gets the defaults below.
Per-source address allow-lists and certificate subjects live on the source
(``hl7.allow_from``, ``hl7.tls_subjects``; see ``sources.py``).
"""
from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_networks(values: list[str]) -> list[str]:
    """Validate CIDR blocks (a bare address is a /32 or /128); raise ValueError naming the bad one."""
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError as exc:
            raise ValueError(f"'{v}' is not an IP address or CIDR block") from exc
    return values


def networks(values: list[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def address_in(addr: str, nets: tuple[Network, ...]) -> bool:
    """Whether ``addr`` (IPv4, IPv6 or IPv4-mapped IPv6) lies in one of ``nets``; False if unparsable."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in nets)


class ListenerTls(_Strict):
    """MLLP over TLS on this listener (HL7 defines none; see docs/mllp.md)."""

    cert_file: Path = Field(description="server certificate chain (PEM); re-read when it changes on disk")
    key_file: Path = Field(description="private key of cert_file (PEM)")
    client_ca_file: Path | None = Field(
        default=None, description="CA bundle (PEM) for client certificates: mutual TLS when set"
    )
    require_client_cert: bool = Field(default=True, description="with client_ca_file: refuse clients without a certificate")
    min_version: Literal["1.2", "1.3"] = Field(default="1.2", description="oldest TLS version accepted")

    @model_validator(mode="after")
    def _files_exist(self) -> ListenerTls:
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} '{path}' does not exist or is not a file")
        return self


class ProxyProtocolSettings(_Strict):
    """Accept a PROXY protocol (v2 or v1) header from these balancers only."""

    trusted: list[str] = Field(min_length=1, description="balancer addresses (CIDR) allowed to send the header")

    @field_validator("trusted")
    @classmethod
    def _cidr(cls, v: list[str]) -> list[str]:
        return parse_networks(v)


class MllpListenerConfig(_Strict):
    """One MLLP port: its limits and, optionally, TLS and the PROXY protocol."""

    port: int = Field(ge=0, le=65535)
    host: str | None = Field(default=None, description="bind address (default CARELOOP_MLLP_HOST)")
    max_connections: int = Field(default=512, ge=1, description="open connections; more are closed on accept")
    max_connections_per_address: int = Field(
        default=64, ge=1, description="open connections from one client address (after PROXY protocol)"
    )
    frame_deadline_s: float = Field(
        default=30.0, gt=0,
        description="time allowed for a whole frame from its first byte (and for a TLS handshake or PROXY header)",
    )
    max_buffered_bytes_per_connection: int = Field(
        default=4 * 1_048_576, ge=65536,
        description="bytes one connection may hold (unfinished frame + frames waiting for storage); then reading pauses",
    )
    max_buffered_bytes_total: int = Field(
        default=64 * 1_048_576, ge=65536,
        description="bytes all connections of this listener may hold; an unfinished frame beyond it closes its connection",
    )
    junk_keep_bytes: int = Field(
        default=65536, ge=0, description="bytes of a burst outside frames kept in its errored record; the rest is counted"
    )
    max_junk_frames: int = Field(
        default=16, ge=1,
        description="complete non-HL7 frames (each stored and answered AE) one connection may send; "
        "then it is closed as not an HL7 peer and the rest of its bytes is one errored record",
    )
    tls: ListenerTls | None = None
    proxy_protocol: ProxyProtocolSettings | None = None


_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def build_server_context(cfg: ListenerTls) -> ssl.SSLContext:
    """A server context: TLS ``min_version`` or newer, the certificate chain, and client
    verification against ``client_ca_file`` when set. Raises OSError / ssl.SSLError / ValueError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[cfg.min_version]
    ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    if cfg.client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(cfg.client_ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def check_listeners(items: list[MllpListenerConfig]) -> list[tuple[int, str | None, str, str]]:
    """Problems pydantic cannot see: a port listed twice, certificates that do not load.
    Returns (index, key, code, message) tuples for positioned diagnostics."""
    out: list[tuple[int, str | None, str, str]] = []
    seen: set[int] = set()
    for i, cfg in enumerate(items):
        if cfg.port in seen:
            out.append((i, "port", "duplicate-listener", f"MLLP port {cfg.port} is listed twice"))
        seen.add(cfg.port)
        if cfg.tls is not None:
            try:
                build_server_context(cfg.tls)
            except (OSError, ssl.SSLError, ValueError) as exc:
                out.append((i, "tls", "tls-unusable", f"certificate, key or CA does not load: {exc}"))
    return out


def default_listener(port: int) -> MllpListenerConfig:
    """The settings of a port no ``listeners:`` entry describes."""
    return MllpListenerConfig(port=port)
