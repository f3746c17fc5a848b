"""Retry decisions as values (pure) and the per-destination circuit breaker and token bucket."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .registry import AuthFailure, Delivered, Disable, Outcome, Permanent, RateLimit, Retry


@dataclass(frozen=True)
class Decision:
    status: str  # delivered | pending (retry) | dead | disabled
    next_in_s: float | None = None
    reason: str = ""


def decide(outcome: Outcome, attempt: int, *, max_attempts: int, base_s: float, max_s: float, rng: random.Random | None = None) -> Decision:
    """What to do after attempt number ``attempt`` (1-based).

    Backoff: ``min(max_s, base_s * 2**(attempt-1))`` with ±10 % jitter, or the
    destination's Retry-After when it gave one. With base 30 s, max 6 h and 12
    attempts the last try comes about 26 h after the first.
    """
    rng = rng or random.Random()
    if isinstance(outcome, Delivered):
        return Decision("delivered")
    if isinstance(outcome, Disable):
        return Decision("dead", reason=f"destination disabled: {outcome.reason}")
    if isinstance(outcome, Permanent):
        return Decision("dead", reason=outcome.reason)
    if attempt >= max_attempts:
        return Decision("dead", reason=f"gave up after {attempt} attempts: {getattr(outcome, 'reason', '')}")
    if isinstance(outcome, Retry) and outcome.after_s is not None:
        return Decision("pending", max(0.0, outcome.after_s), outcome.reason)
    wait = min(max_s, base_s * (2 ** (attempt - 1)))
    wait *= 1 + rng.uniform(-0.1, 0.1)
    reason = getattr(outcome, "reason", "")
    if isinstance(outcome, AuthFailure):
        return Decision("pending", max(wait, 300.0), reason)
    return Decision("pending", wait, reason)


class TokenBucket:
    def __init__(self, limit: RateLimit) -> None:
        self.rate = limit.rate
        self.capacity = float(limit.burst)
        self.tokens = float(limit.burst)
        self.at = time.monotonic()

    def take(self, n: int = 1) -> float:
        """Take ``n`` tokens; return seconds to wait first (0 if available now)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= n
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures for ``cool_s``; auth failures open it until reset."""

    def __init__(self, threshold: int = 5, cool_s: float = 60.0) -> None:
        self.threshold = threshold
        self.cool_s = cool_s
        self.failures = 0
        self.open_until = 0.0
        self.auth_blocked: str | None = None

    @property
    def state(self) -> str:
        if self.auth_blocked:
            return "open-auth"
        if time.monotonic() < self.open_until:
            return "open"
        return "half-open" if self.failures >= self.threshold else "closed"

    def allow(self) -> bool:
        return self.state in ("closed", "half-open")

    def record(self, outcome: Outcome) -> None:
        if isinstance(outcome, Delivered):
            self.failures = 0
            return
        if isinstance(outcome, AuthFailure):
            self.auth_blocked = outcome.reason
            return
        if isinstance(outcome, Retry):
            self.failures += 1
            if self.failures >= self.threshold:
                self.open_until = time.monotonic() + self.cool_s

    def reset(self) -> None:
        self.failures, self.open_until, self.auth_blocked = 0, 0.0, None
