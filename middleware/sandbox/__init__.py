"""Local HAPI FHIR sandbox for developers and CI.

``middleware.sandbox.hapi`` builds and runs the HAPI FHIR R4 JPA server (our own small
Spring Boot launcher in ``sandbox/hapi/``, built into an image by compose when a
Docker engine runs); ``middleware.sandbox.seed`` generates deterministic, obviously synthetic data.
Everything here talks to loopback only.
"""
from __future__ import annotations

from .hapi import (
    SandboxError,
    SandboxHandle,
    SandboxStatus,
    build_launcher,
    detect_runtime,
    start,
    status,
    stop,
    wait_ready,
)

__all__ = [
    "SandboxError",
    "SandboxHandle",
    "SandboxStatus",
    "build_launcher",
    "detect_runtime",
    "start",
    "status",
    "stop",
    "wait_ready",
]
