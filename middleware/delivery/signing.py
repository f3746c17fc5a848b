"""Standard Webhooks v1 symmetric signing and verification.

Spec: github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md.
The signed content is ``"{webhook-id}.{webhook-timestamp}.{raw body}"``; the
signature is ``v1,`` + base64(HMAC-SHA256(key, content)) where ``key`` is the
base64-decoded part of a ``whsec_<base64>`` secret. Several secrets (rotation)
give several signatures separated by a single space in ``webhook-signature``.

    sig = sign("whsec_...", "msg_1", 1700000000, b'{"a":1}')
    verify(["whsec_new", "whsec_old"], request_headers, raw_body)   # raises on failure
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
#: Spec default: reject messages whose timestamp is more than 5 min (300 s) off.
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(ValueError):
    """A webhook could not be verified; ``str(err)`` says why (never contains the secret)."""


def decode_secret(secret: str) -> bytes:
    """Return the HMAC key of a ``whsec_<base64>`` secret (the prefix is optional).

    Raises :class:`ValueError` when the part after the prefix is not valid base64.
    """
    raw = secret.strip()
    if raw.startswith(SECRET_PREFIX):
        raw = raw[len(SECRET_PREFIX):]
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not valid base64 after the 'whsec_' prefix") from exc


def generate_secret(n_bytes: int = 32) -> str:
    """A fresh random ``whsec_`` secret (spec: 24–64 bytes of key material)."""
    if not 24 <= n_bytes <= 64:
        raise ValueError("secret length must be 24..64 bytes")
    return SECRET_PREFIX + base64.b64encode(os.urandom(n_bytes)).decode("ascii")


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode("utf-8") + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def sign(secret: str | Sequence[str], msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` header value for one secret or several (space-separated).

    ``body`` must be the exact bytes sent. Raises :class:`ValueError` for a malformed
    secret or an empty secret list.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("at least one webhook secret is required")
    payload = _as_bytes(body)
    return " ".join(_signature(decode_secret(s), msg_id, int(timestamp), payload) for s in secrets)


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify(
    secrets: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: datetime | None = None,
) -> str:
    """Check a received webhook; return its ``webhook-id`` when valid.

    Raises :class:`WebhookVerificationError` when a header is missing, the timestamp
    is not an integer or is more than ``tolerance_s`` away from ``now``, or no ``v1``
    signature matches any of ``secrets`` (compared in constant time).
    """
    keys = [decode_secret(s) for s in ([secrets] if isinstance(secrets, str) else secrets)]
    if not keys:
        raise WebhookVerificationError("no webhook secret configured")
    msg_id = _header(headers, "webhook-id")
    ts_raw = _header(headers, "webhook-timestamp")
    sig_header = _header(headers, "webhook-signature")
    try:
        timestamp = int(ts_raw.strip())
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    current = (now or datetime.now(timezone.utc)).timestamp()
    if timestamp < current - tolerance_s:
        raise WebhookVerificationError("message timestamp too old")
    if timestamp > current + tolerance_s:
        raise WebhookVerificationError("message timestamp too new")
    payload = _as_bytes(body)
    candidates = [
        part.split(",", 1)[1]
        for part in sig_header.split(" ")
        if part.startswith(SIGNATURE_VERSION + ",")
    ]
    if not candidates:
        raise WebhookVerificationError("no v1 signature in webhook-signature")
    for key in keys:
        expected = _signature(key, msg_id, timestamp, payload).split(",", 1)[1]
        for candidate in candidates:
            if hmac.compare_digest(expected.encode("ascii"), candidate.encode("ascii", "replace")):
                return msg_id
    raise WebhookVerificationError("no matching signature")
