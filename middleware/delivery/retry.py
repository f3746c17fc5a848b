"""Retry decisions as values (pure) and the per-destination circuit breaker and token bucket."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

from ..storage.statuses import DeliveryStatus
from .registry import AuthFailure, Delivered, Disable, Outcome, Permanent, RateLimit, Retry


@dataclass(frozen=True)
class Decision:
    status: DeliveryStatus  # delivered | pending (retry) | dead
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
        return Decision(DeliveryStatus.DELIVERED)
    if isinstance(outcome, Disable):
        return Decision(DeliveryStatus.DEAD, reason=f"destination disabled: {outcome.reason}")
    if isinstance(outcome, Permanent):
        return Decision(DeliveryStatus.DEAD, reason=outcome.reason)
    if attempt >= max_attempts:
        return Decision(DeliveryStatus.DEAD, reason=f"gave up after {attempt} attempts: {getattr(outcome, 'reason', '')}")
    if isinstance(outcome, Retry) and outcome.after_s is not None:
        return Decision(DeliveryStatus.PENDING, max(0.0, outcome.after_s), outcome.reason)
    wait = min(max_s, base_s * (2 ** (attempt - 1)))
    wait *= 1 + rng.uniform(-0.1, 0.1)
    reason = getattr(outcome, "reason", "")
    if isinstance(outcome, AuthFailure):
        return Decision(DeliveryStatus.PENDING, max(wait, 300.0), reason)
    return Decision(DeliveryStatus.PENDING, wait, reason)


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
    """Pause a failing destination, then probe it, then resume.

    States: ``closed`` (send freely) → after ``threshold`` consecutive transient
    failures ``open`` for ``cool_s`` (no sends) → ``half-open`` (one probe delivery
    allowed: :meth:`budget` is 1) → a success closes it, a failure re-opens it for
    twice as long (at most ``max_cool_s``). An :class:`AuthFailure` (static
    credentials refused) opens it as ``open-auth`` until :meth:`reset` (an operator
    resumes the destination after fixing the key). ``clock`` is monotonic seconds.
    """

    def __init__(self, threshold: int = 5, cool_s: float = 30.0, max_cool_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.base_cool_s = cool_s
        self.cool_s = cool_s
        self.max_cool_s = max_cool_s
        self.clock = clock
        self.failures = 0
        self.open_until = 0.0
        self.opened = False
        self.auth_blocked: str | None = None

    @property
    def state(self) -> str:
        if self.auth_blocked:
            return "open-auth"
        if not self.opened:
            return "closed"
        return "open" if self.clock() < self.open_until else "half-open"

    def budget(self) -> int | None:
        """How many deliveries may be claimed now: None = no limit, 1 = a probe, 0 = paused."""
        st = self.state
        return None if st == "closed" else 1 if st == "half-open" else 0

    def allow(self) -> bool:
        return self.budget() != 0

    def record(self, outcome: Outcome) -> None:
        if isinstance(outcome, Delivered):
            self.failures, self.opened, self.cool_s = 0, False, self.base_cool_s
            return
        if isinstance(outcome, AuthFailure):
            self.auth_blocked = outcome.reason
            return
        if isinstance(outcome, Retry):
            was_probe = self.state == "half-open"
            self.failures += 1
            if was_probe or self.failures >= self.threshold:
                if was_probe:
                    self.cool_s = min(self.max_cool_s, self.cool_s * 2)
                self.opened, self.open_until = True, self.clock() + self.cool_s

    def reset(self) -> None:
        self.failures, self.open_until, self.opened, self.auth_blocked = 0, 0.0, False, None
        self.cool_s = self.base_cool_s
