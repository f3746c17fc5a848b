"""Minimum-necessary projection (pure): what one destination may receive.

Deny by default: a payload field leaves only when the destination's policy names it
(dotted paths reach into nested objects). ``thin`` mode sends only the pseudonymous
contact key, the trigger name, the time and a link back. Patients are identified by a
keyed HMAC of their key unless the policy explicitly allows the MRN.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ..config.destinations import Policy


def contact_key(secret: str, patient_key: str | None) -> str:
    """Pseudonymous, stable per patient and secret; not reversible without the secret."""
    if not patient_key:
        return ""
    mac = hmac.new(secret.encode(), patient_key.encode(), hashlib.sha256).hexdigest()
    return "ck_" + mac[:40]


def _get(obj: Any, path: list[str]) -> tuple[bool, Any]:
    cur = obj
    for part in path:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return False, None
    return True, cur


def _put(out: dict[str, Any], path: list[str], value: Any) -> None:
    cur = out
    for part in path[:-1]:
        cur = cur.setdefault(part, {})
    cur[path[-1]] = value


def project(payload: dict[str, Any], policy: Policy) -> tuple[dict[str, Any], list[str]]:
    """Return (allowed payload, dotted names of the fields kept)."""
    if policy.mode == "thin":
        return {}, []
    out: dict[str, Any] = {}
    kept: list[str] = []
    for name in policy.allow:
        if name == "purpose" or name in ("contact_key", "trigger", "occurred_at"):
            if name == "purpose" and "purpose" in payload:
                out["purpose"] = payload["purpose"]
                kept.append("purpose")
            continue
        found, value = _get(payload, name.split("."))
        if found:
            _put(out, name.split("."), value)
            kept.append(name)
    return out, kept


def identifier_for(policy: Policy, secret: str, patient_key: str | None) -> str:
    """The contact key a destination receives: HMAC by default, the MRN only if allowed."""
    if policy.identifiers == "mrn" and patient_key:
        return patient_key.split("|", 1)[-1]
    return contact_key(secret, patient_key)
