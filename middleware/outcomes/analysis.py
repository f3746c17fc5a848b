"""One experiment period's comparison of arms: intention to treat, per-protocol beside it,
the power note and a plain-language verdict. Pure: the counts come from storage.

The unit is the patient's journey entry. Intention to treat counts every entry assigned to
an arm whatever happened to its delivery (suppressed, failed, consent revoked); measure
exclusions (readmission, hospice, death where the goal's definition excludes them) leave
the denominator, and pending entries (window still open) are reported, not counted.
Per-protocol keeps only treated entries that were delivered; it is shown beside ITT, never
instead of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from middleware.outcomes.stats import (
    Interval,
    RatioInterval,
    SampleSize,
    newcombe_difference,
    risk_ratio,
    sample_size,
    wilson,
)


@dataclass(frozen=True, slots=True)
class ArmTally:
    """Journey entries of one arm by outcome."""

    achieved: int = 0
    missed: int = 0
    excluded: int = 0
    pending: int = 0
    delivered_achieved: int = 0  # per-protocol: entries whose delivery reached the destination
    delivered_missed: int = 0

    @property
    def assigned(self) -> int:
        return self.achieved + self.missed + self.excluded + self.pending

    @property
    def resolved(self) -> int:
        return self.achieved + self.missed


@dataclass(frozen=True, slots=True)
class Comparison:
    treated_rate: Interval
    control_rate: Interval
    difference: Interval  # treated - control (Newcombe hybrid score)
    ratio: RatioInterval  # treated / control (Katz log)


@dataclass(frozen=True, slots=True)
class Analysis:
    itt: Comparison | None
    per_protocol: Comparison | None
    needed: SampleSize | None
    enough: bool
    verdict: str


def compare(tx: int, tn: int, cx: int, cn: int, confidence: float = 0.95) -> Comparison | None:
    if tn == 0 or cn == 0:
        return None
    return Comparison(wilson(tx, tn, confidence), wilson(cx, cn, confidence),
                      newcombe_difference(tx, tn, cx, cn, confidence), risk_ratio(tx, tn, cx, cn, confidence))


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v * 100:.1f}%"


def analyse(treated: ArmTally, control: ArmTally, *, min_lift: float, holdout_share: float,
            baseline: float | None = None, confidence: float = 0.95, power: float = 0.80) -> Analysis:
    """Compare the arms. ``min_lift`` is the smallest absolute change in the goal rate worth
    detecting (e.g. 0.03); ``baseline`` the expected control rate (else the observed one)."""
    itt = compare(treated.achieved, treated.resolved, control.achieved, control.resolved, confidence)
    pp = compare(treated.delivered_achieved, treated.delivered_achieved + treated.delivered_missed,
                 control.achieved, control.resolved, confidence)
    base = baseline
    if base is None and control.resolved:
        base = control.achieved / control.resolved
    needed: SampleSize | None = None
    if base is not None and 0 < base < 1 and 0 < base + min_lift < 1 and min_lift != 0:
        needed = sample_size(base, base + min_lift, ratio=(1 - holdout_share) / holdout_share,
                             alpha=1 - confidence, power=power)
    enough = (needed is not None and treated.resolved >= needed.treated and control.resolved >= needed.control)
    if itt is None:
        verdict = "not enough patients yet: an arm has no resolved entries"
    elif not enough:
        if needed is None:
            verdict = "not enough patients yet: no baseline rate to size the study"
        else:
            verdict = (f"not enough patients yet: {treated.resolved}/{needed.treated} treated and "
                       f"{control.resolved}/{needed.control} held out resolved for a {min_lift * 100:+.1f} point lift")
    else:
        d = itt.difference
        if d.low > 0:
            verdict = (f"the goal was reached more often when contacted: {_pct(d.estimate)} points "
                       f"({_pct(d.low)} to {_pct(d.high)})")
        elif d.high < 0:
            verdict = (f"the goal was reached less often when contacted: {_pct(d.estimate)} points "
                       f"({_pct(d.low)} to {_pct(d.high)})")
        else:
            verdict = (f"no difference shown: {_pct(d.estimate)} points ({_pct(d.low)} to {_pct(d.high)}) "
                       "includes zero")
    return Analysis(itt, pp, needed, enough, verdict)
