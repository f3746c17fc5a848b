"""Interval arithmetic for outcome reports (pure functions, standard library only).

* :func:`wilson` — the Wilson score interval for one proportion (Wilson 1927; Newcombe
  1998 method 3), which keeps its coverage near 0 and 1 where the Wald interval fails.
* :func:`newcombe_difference` — the difference of two independent proportions with
  Newcombe's hybrid score interval (Newcombe 1998, *Statistics in Medicine* 17:873-890,
  method 10), built from the two Wilson intervals. Worked example from the paper:
  56/70 vs 48/80 gives 0.2000 (0.0524, 0.3339).
* :func:`risk_ratio` — the relative risk with the log (Katz 1978) interval; a zero cell
  takes the usual 0.5 continuity correction, and says so.
* :func:`sample_size` — patients needed per arm to detect ``p_control`` → ``p_treated``
  at two-sided α and power, for an allocation ratio (treated per control), by the normal
  approximation for two proportions (Fleiss, *Statistical Methods for Rates and
  Proportions*, with unequal allocation). 18.8% → 15.8% at 1:1 needs about 2,500 per arm.

Intervals are fixed-horizon: a report is read at its declared horizon (see
``docs/outcomes.md``); reading it daily and stopping on the first "significant" day
inflates false positives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_N = NormalDist()


def z_for(confidence: float) -> float:
    """The two-sided critical value for ``confidence`` (0.95 → 1.95996…)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")
    return _N.inv_cdf(1.0 - (1.0 - confidence) / 2.0)


@dataclass(frozen=True, slots=True)
class Interval:
    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _check(x: int, n: int) -> None:
    if n < 0 or x < 0 or x > n:
        raise ValueError(f"need 0 <= successes <= trials, got {x}/{n}")


def wilson(x: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for ``x`` successes in ``n`` trials (n = 0 gives 0..1)."""
    _check(x, n)
    if n == 0:
        return Interval(math.nan, 0.0, 1.0)
    z = z_for(confidence)
    p = x / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Exact ends at 0 and n (floating error would otherwise leave 1e-17 outside).
    low = 0.0 if x == 0 else max(0.0, centre - half)
    high = 1.0 if x == n else min(1.0, centre + half)
    return Interval(p, low, high)


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> Interval:
    """p1 - p2 with Newcombe's hybrid score interval (method 10)."""
    a, b = wilson(x1, n1, confidence), wilson(x2, n2, confidence)
    if n1 == 0 or n2 == 0:
        return Interval(math.nan, -1.0, 1.0)
    p1, p2 = a.estimate, b.estimate
    d = p1 - p2
    low = d - math.sqrt((p1 - a.low) ** 2 + (b.high - p2) ** 2)
    high = d + math.sqrt((a.high - p1) ** 2 + (p2 - b.low) ** 2)
    return Interval(d, max(-1.0, low), min(1.0, high))


@dataclass(frozen=True, slots=True)
class RatioInterval(Interval):
    corrected: bool = False  # a zero cell took the 0.5 continuity correction


def risk_ratio(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95) -> RatioInterval:
    """(x1/n1) / (x2/n2) with the Katz log interval."""
    _check(x1, n1)
    _check(x2, n2)
    if n1 == 0 or n2 == 0:
        return RatioInterval(math.nan, 0.0, math.inf)
    corrected = x1 == 0 or x2 == 0 or x1 == n1 or x2 == n2
    a, b, m1, m2 = float(x1), float(x2), float(n1), float(n2)
    if corrected:
        a, b, m1, m2 = a + 0.5, b + 0.5, m1 + 1.0, m2 + 1.0
    rr = (a / m1) / (b / m2)
    se = math.sqrt(1 / a - 1 / m1 + 1 / b - 1 / m2)
    z = z_for(confidence)
    return RatioInterval(rr, rr * math.exp(-z * se), rr * math.exp(z * se), corrected)


@dataclass(frozen=True, slots=True)
class SampleSize:
    control: int
    treated: int

    @property
    def total(self) -> int:
        return self.control + self.treated


def sample_size(p_control: float, p_treated: float, ratio: float = 1.0,
                alpha: float = 0.05, power: float = 0.80) -> SampleSize:
    """Patients needed in each arm; ``ratio`` = treated per control (a 10% holdout is 9)."""
    if not (0 < p_control < 1 and 0 < p_treated < 1) or p_control == p_treated:
        raise ValueError("need two different rates strictly between 0 and 1")
    if ratio <= 0:
        raise ValueError("ratio must be positive")
    k = ratio
    za = z_for(1 - alpha)
    zb = _N.inv_cdf(power)
    pbar = (p_control + k * p_treated) / (1 + k)
    qbar = 1 - pbar
    num = (za * math.sqrt(pbar * qbar * (1 + 1 / k))
           + zb * math.sqrt(p_control * (1 - p_control) + p_treated * (1 - p_treated) / k)) ** 2
    n_control = math.ceil(num / (p_control - p_treated) ** 2)
    return SampleSize(n_control, math.ceil(n_control * k))


def holdout_ratio(holdout_share: float) -> float:
    """Treated per control for a holdout share (0.10 → 9.0)."""
    if not 0 < holdout_share < 1:
        raise ValueError("holdout share must be between 0 and 1 (exclusive)")
    return (1 - holdout_share) / holdout_share
