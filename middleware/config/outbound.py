"""Config-load checks of outbound URLs against :mod:`middleware.netpolicy` (file:line diagnostics)."""
from __future__ import annotations

from typing import Any

from .. import netpolicy
from .yamlpos import DiagnosticSink


def load_policy(allow_private: bool) -> netpolicy.NetPolicy:
    """The policy a destination or source is checked with at load: careloop's own ports are
    the ``CARELOOP_HTTP_PORT`` / ``CARELOOP_MLLP_PORT`` settings (8080 and 2575 by default)."""
    from ..settings import Settings

    try:
        s = Settings()
        ports: tuple[int, ...] = (s.http_port, s.mllp_port)
    except Exception:  # a malformed environment is reported where settings are loaded
        ports = ()
    return netpolicy.policy(allow_private, *ports)


def check_url(sink: DiagnosticSink, node: Any, key: str | int, url: Any, policy: netpolicy.NetPolicy,
              label: str | None = None) -> None:
    """Add an ``outbound-url`` error at ``node[key]`` when ``url`` is not an allowed destination."""
    if not isinstance(url, str) or not url:
        return
    reason = netpolicy.url_refusal(url, policy)
    if reason is not None:
        sink.error(node, key, "outbound-url", f"{label or key}: {reason}")
