"""Randomized holdout assignment: deterministic, keyed, and persisted by the caller.

A patient's arm in an experiment period is decided once from a keyed HMAC-SHA256 of the
stable internal patient id (after following merges to the surviving patient), the
experiment id and the period's salt. The key is a careloop secret, so nobody can predict or
steer an arm from identifiers; the salt changes per period (rotation), so a control group
does not drift into "the same patients forever"; periods are never pooled. Editing or
reloading rules never moves a patient: the first assignment is stored and wins.
"""
from __future__ import annotations

import hashlib
import hmac
from middleware.storage.statuses import HoldoutArm as Arm

__all__ = ["Arm", "assign", "bucket"]


def bucket(key: bytes, patient_id: str, experiment: str, salt: str) -> float:
    """A uniform number in [0, 1) for this patient in this experiment period."""
    if not key:
        raise ValueError("the holdout key must not be empty")
    msg = "\x1f".join((experiment, salt, patient_id)).encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(key: bytes, patient_id: str, experiment: str, salt: str, share: float) -> Arm:
    """The arm for ``patient_id``; ``share`` is the held-out fraction (0.10 for 10%)."""
    if not 0.0 <= share < 1.0:
        raise ValueError("holdout share must be at least 0 and below 1")
    return Arm.HELD_OUT if bucket(key, patient_id, experiment, salt) < share else Arm.TREATED
