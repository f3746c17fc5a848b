"""Interval arithmetic against published worked examples (Newcombe 1998) and properties."""
from __future__ import annotations

import math
import random

import pytest

from middleware.outcomes.analysis import ArmTally, analyse
from middleware.outcomes.holdout import Arm, assign, bucket
from middleware.outcomes.stats import holdout_ratio, newcombe_difference, risk_ratio, sample_size, wilson


@pytest.mark.parametrize(("x", "n", "low", "high"), [
    # Newcombe 1998 (Stat Med 17:857), Table I, method 3 (score interval)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombe_table(x: int, n: int, low: float, high: float) -> None:
    iv = wilson(x, n)
    assert iv.low == pytest.approx(low, abs=6e-5)
    assert iv.high == pytest.approx(high, abs=6e-5)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "d", "low", "high"), [
    # Newcombe 1998 (Stat Med 17:873), Table II, method 10 (hybrid score)
    (56, 70, 48, 80, 0.2000, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.6000, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.5714, 0.0582, 0.8062),
    (5, 56, 0, 29, 0.0893, -0.0381, 0.1926),
    (0, 10, 0, 20, 0.0, -0.1611, 0.2775),
    (10, 10, 0, 20, 1.0, 0.6791, 1.0),
])
def test_newcombe_hybrid_matches_worked_examples(x1: int, n1: int, x2: int, n2: int,
                                                 d: float, low: float, high: float) -> None:
    iv = newcombe_difference(x1, n1, x2, n2)
    assert iv.estimate == pytest.approx(d, abs=5e-5)
    assert iv.low == pytest.approx(low, abs=6e-5)
    assert iv.high == pytest.approx(high, abs=6e-5)


def test_risk_ratio_katz() -> None:
    rr = risk_ratio(20, 100, 40, 100)
    assert rr.estimate == pytest.approx(0.5)
    se = math.sqrt(1 / 20 - 1 / 100 + 1 / 40 - 1 / 100)
    assert rr.low == pytest.approx(0.5 * math.exp(-1.959964 * se), rel=1e-5)
    assert rr.high == pytest.approx(0.5 * math.exp(1.959964 * se), rel=1e-5)
    assert not rr.corrected
    assert risk_ratio(0, 50, 5, 50).corrected


def test_sample_size_matches_the_issue() -> None:
    # no-show 18.8% -> 15.8%: about 2,500 per arm at 1:1
    even = sample_size(0.188, 0.158)
    assert 2450 <= even.control <= 2550 and even.control == even.treated
    # a 10% holdout: about 1,350 held out and 12,200 treated
    ten = sample_size(0.188, 0.158, ratio=holdout_ratio(0.10))
    assert 1300 <= ten.control <= 1400
    assert 12000 <= ten.treated <= 12400
    # FUH-7 36.6% -> 41.6%: about 1,500 per arm
    assert 1450 <= sample_size(0.366, 0.416).control <= 1550


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        wilson(5, 4)
    with pytest.raises(ValueError):
        sample_size(0.2, 0.2)
    with pytest.raises(ValueError):
        holdout_ratio(0)


def test_wilson_coverage_is_near_nominal() -> None:
    """Over repeated simulated studies the 95% interval covers the true rate ~95% of the time."""
    rng = random.Random(20261206)
    p, n, runs = 0.3, 200, 2000
    covered = sum(wilson(sum(rng.random() < p for _ in range(n)), n).contains(p) for _ in range(runs))
    assert 0.93 <= covered / runs <= 0.97


def test_newcombe_covers_a_known_effect() -> None:
    """A simulated experiment of 10,000 patients (10% held out) with a known lift: over repeated
    seeds the interval covers the true difference at about its nominal rate."""
    rng = random.Random(7)
    p_t, p_c, n_t, n_c, runs = 0.45, 0.38, 9000, 1000, 400
    truth = p_t - p_c
    covered = 0
    for _ in range(runs):
        xt = sum(rng.random() < p_t for _ in range(n_t))
        xc = sum(rng.random() < p_c for _ in range(n_c))
        covered += newcombe_difference(xt, n_t, xc, n_c).contains(truth)
    assert 0.92 <= covered / runs <= 0.98


def test_holdout_is_deterministic_keyed_and_near_its_share() -> None:
    key = b"k" * 32
    arms = [assign(key, f"pt_{i:06d}", "noshow-rebook", "2026Q4", 0.10) for i in range(20000)]
    share = arms.count(Arm.HELD_OUT) / len(arms)
    assert 0.09 <= share <= 0.11
    assert arms == [assign(key, f"pt_{i:06d}", "noshow-rebook", "2026Q4", 0.10) for i in range(20000)]
    # another key or another salt (a new period) reshuffles: the arms are not the same patients
    other = [assign(b"x" * 32, f"pt_{i:06d}", "noshow-rebook", "2026Q4", 0.10) for i in range(20000)]
    rotated = [assign(key, f"pt_{i:06d}", "noshow-rebook", "2027Q1", 0.10) for i in range(20000)]
    assert sum(a != b for a, b in zip(arms, other)) > 2000
    assert sum(a != b for a, b in zip(arms, rotated)) > 2000
    assert 0 <= bucket(key, "pt_1", "e", "s") < 1
    with pytest.raises(ValueError):
        assign(b"", "pt_1", "e", "s", 0.1)


def test_analysis_says_not_enough_until_the_sample_is_there() -> None:
    small = analyse(ArmTally(achieved=50, missed=50), ArmTally(achieved=4, missed=8), min_lift=0.05, holdout_share=0.1)
    assert not small.enough and small.verdict.startswith("not enough patients yet")
    assert small.itt is not None and small.itt.difference.estimate == pytest.approx(0.5 - 4 / 12)
    big = analyse(ArmTally(achieved=7000, missed=6000, delivered_achieved=6500, delivered_missed=5000),
                  ArmTally(achieved=600, missed=900), min_lift=0.05, holdout_share=0.1)
    assert big.enough
    assert big.itt is not None and big.itt.difference.low > 0
    assert "more often when contacted" in big.verdict
    assert big.per_protocol is not None and big.per_protocol.treated_rate.estimate == pytest.approx(6500 / 11500)
    # pending and excluded entries are reported, not counted in the rates
    t = ArmTally(achieved=10, missed=10, excluded=3, pending=7)
    assert t.assigned == 30 and t.resolved == 20
