"""Outcome reports: per goal and experiment period (optionally broken down by rule-set version,
destination, and the anchor's local month or ISO week), each arm's entries by outcome, the
funnel (eligible, held out, triggered, delivered, suppressed with reasons, achieved per arm), the
ITT comparison with per-protocol beside it, the power note and a plain-language verdict; as a
terminal table, JSON, CSV or FHIR MeasureReports.

The unit is always the patient's journey entry: a breakdown splits entries, never counts an
entry twice (two reminders for one visit are one entry, counted under its first trigger).

Reports are read at a declared horizon: the intervals are fixed-horizon (not sequential), so
a report is meaningful once its period's windows have closed (``pending`` shows how many are
still open). They cannot see outcomes at other organisations, reminders the EHR sent by itself
(portal reminders), or patients whose events never reach careloop; every report says so.
"""
from __future__ import annotations

import csv
import io
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy.engine import Engine

from middleware.outcomes.analysis import Analysis, ArmTally, analyse
from middleware.outcomes.measure import measure_report
from middleware.storage.queries import outcomes as q
from middleware.storage.sql import unit

BLIND_SPOTS = ("outcomes at other organisations", "reminders the EHR or portal sent by itself",
               "patients whose events never reach careloop")

#: report breakdowns (``--by`` / ``?by=``) and the entry column each reads
DIMENSIONS: dict[str, str] = {"rule_version": "ruleset_version", "destination": "destination", "month": "anchor_month",
                              "week": "anchor_week"}
#: what a breakdown shows for an entry opened before careloop recorded it (revision 0010)
UNKNOWN = "unknown"

def parse_by(values: Iterable[str] | None) -> tuple[str, ...]:
    """``--by`` / ``?by=`` values (repeated or comma lists) in a stable order; ValueError names an unknown one."""
    out: list[str] = []
    for v in values or ():
        for name in (x.strip() for x in v.split(",")):
            if not name:
                continue
            if name not in DIMENSIONS:
                raise ValueError(f"unknown breakdown '{name}' (one of: {', '.join(DIMENSIONS)})")
            if name not in out:
                out.append(name)
    return tuple(sorted(out, key=list(DIMENSIONS).index))


@dataclass(frozen=True)
class Funnel:
    """One report group's funnel: every eligible entry, the held-out ones, the treated ones whose
    trigger was recorded, delivered, or stopped (reason -> entries), and the achieved per arm."""

    eligible: int = 0
    held_out: int = 0
    triggered: int = 0
    delivered: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    achieved_treated: int = 0
    achieved_held_out: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"eligible": self.eligible, "held_out": self.held_out, "triggered": self.triggered,
                "delivered": self.delivered, "suppressed": dict(self.suppressed),
                "achieved": {"treated": self.achieved_treated, "held_out": self.achieved_held_out}}


def _funnel(rows: Sequence[q.Tally]) -> Funnel:
    held = [r for r in rows if r.arm == "held_out"]
    stopped: Counter[str] = Counter()
    for r in rows:
        if r.stopped and not r.delivered:
            stopped[r.stopped] += r.entries
    return Funnel(
        eligible=sum(r.entries for r in rows), held_out=sum(r.entries for r in held),
        triggered=sum(r.triggered for r in rows), delivered=sum(r.entries for r in rows if r.delivered),
        suppressed=dict(sorted(stopped.items(), key=lambda kv: (-kv[1], kv[0]))),
        achieved_treated=sum(r.entries for r in rows if r.arm != "held_out" and r.status == "achieved"),
        achieved_held_out=sum(r.entries for r in held if r.status == "achieved"))


@dataclass(frozen=True)
class PeriodReport:
    goal_id: str
    experiment: str | None
    period: str | None
    treated: ArmTally  # or every entry, when there is no holdout
    held_out: ArmTally | None
    analysis: Analysis | None
    median_days: dict[str, float | None]
    cumulative_days: dict[str, list[tuple[int, int]]] | None = None  # arm -> [(day, achieved by then)]
    breakdown: tuple[tuple[str, str], ...] = ()  # (dimension, value) of this group, in DIMENSIONS order
    funnel: Funnel = field(default_factory=Funnel)
    arm_funnels: dict[str, Funnel] = field(default_factory=dict)  # "treated" / "held_out" / "all"


def _tally(rows: list[q.Tally]) -> ArmTally:
    c: dict[str, int] = defaultdict(int)
    for r in rows:
        c[r.status] += r.entries
        if r.delivered and r.status in ("achieved", "missed"):
            c["d_" + r.status] += r.entries
    return ArmTally(achieved=c["achieved"], missed=c["missed"], excluded=c["excluded"], pending=c["pending"],
                    delivered_achieved=c["d_achieved"], delivered_missed=c["d_missed"])


def _medians(u: Any, goal_id: str, experiment: str | None, period: str | None,
             rows: list[q.Tally]) -> dict[str, float | None]:
    """Median days to goal per arm, each read as one or two index positions (not every row)."""
    achieved: dict[str | None, int] = defaultdict(int)
    for r in rows:
        if r.status == "achieved":
            achieved[r.arm] += r.entries
    out: dict[str, float | None] = {}
    for arm, n in sorted(achieved.items(), key=lambda kv: kv[0] or ""):
        def nth(i: int, arm: str | None = arm) -> float | None:
            if experiment is None:
                v = u.scalar(q.NTH_ELAPSED_NO_HOLDOUT.name, goal_id=goal_id, n=i)
            else:
                v = u.scalar(q.NTH_ELAPSED.name, goal_id=goal_id, experiment=experiment, period=period, arm=arm, n=i)
            return None if v is None else float(v)
        lo, hi = nth((n - 1) // 2), nth(n // 2)
        out[arm or "all"] = None if lo is None or hi is None else (lo + hi) / 2 / 86400.0
    return out


def build(engine: Engine, goal_id: str, *, min_lift: float = 0.05, holdout_share: float | None = None,
          by: Sequence[str] = ()) -> list[PeriodReport]:
    """The goal's report groups: one per experiment period (and breakdown values, ``by``)."""
    by = parse_by(by)
    cols = [DIMENSIONS[d] for d in by]

    def key_of(r: Any) -> tuple[str | None, ...]:
        return (r.experiment, r.period, *[getattr(r, c) or UNKNOWN for c in cols])

    with unit(engine) as u:
        rows = u.all(q.TALLY.name, goal_id=goal_id)
        groups: dict[tuple[str | None, ...], list[q.Tally]] = defaultdict(list)
        for r in rows:
            groups[key_of(r)].append(r)
        # times to goal are read per experiment period from ix_outcome_elapsed; a breakdown has none
        medians = {} if by else {key: _medians(u, goal_id, key[0], key[1], rs) for key, rs in groups.items()}
    curve = cumulative_by_day(engine, goal_id) if groups else None
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(x or "" for x in kv[0])):
        exp, period = key[0], key[1]
        breakdown = tuple(zip(by, (str(v) for v in key[2:])))
        treated_rows = [r for r in rs if r.arm != "held_out"]
        held_rows = [r for r in rs if r.arm == "held_out"]
        funnel = _funnel(rs)
        med = medians.get(key, {})
        if exp is None:
            out.append(PeriodReport(goal_id, None, None, _tally(rs), None, None, med, curve, breakdown, funnel,
                                    {"all": funnel}))
            continue
        treated, held = _tally(treated_rows), _tally(held_rows)
        share = holdout_share
        if share is None:
            share = held.assigned / max(1, held.assigned + treated.assigned) or 0.1
        share = min(max(share, 0.01), 0.99)
        a = analyse(treated, held, min_lift=min_lift, holdout_share=share)
        out.append(PeriodReport(goal_id, exp, period, treated, held, a, med, curve, breakdown, funnel,
                                {"treated": _funnel(treated_rows), "held_out": _funnel(held_rows)}))
    return out


def cumulative_by_day(engine: Engine, goal_id: str) -> dict[str, list[tuple[int, int]]]:
    """Per arm, how many entries had reached the goal by each whole day after the anchor (all periods)."""
    out: dict[str, list[tuple[int, int]]] = {}
    with unit(engine) as u:
        for r in u.all(q.ACHIEVED_BY_DAY.name, goal_id=goal_id):
            arm = r.arm or "all"
            curve = out.setdefault(arm, [])
            curve.append((int(r.day), (curve[-1][1] if curve else 0) + int(r.entries)))
    return out


def goals(engine: Engine) -> list[tuple[str, int]]:
    with unit(engine) as u:
        return [(g, n) for g, n in u.all(q.GOALS.name)]


def _pct(v: float) -> str:
    return "  n/a" if v is None or math.isnan(v) else f"{v * 100:5.1f}%"


def as_text(reports: list[PeriodReport]) -> str:
    lines = []
    for r in reports:
        head = f"goal {r.goal_id}" + (f" · experiment {r.experiment} · period {r.period}" if r.experiment else " · no holdout")
        lines.append(head + "".join(f" · {d.replace('_', ' ')} {v}" for d, v in r.breakdown))
        lines.append(f"  {'arm':<9} {'entries':>7} {'achieved':>8} {'missed':>6} {'excluded':>8} {'pending':>7}  rate (95% CI)")
        arms = [("treated", r.treated), ("held out", r.held_out)] if r.held_out is not None else [("all", r.treated)]
        for name, t in arms:
            if t is None:
                continue
            rate = ""
            if r.analysis and r.analysis.itt:
                iv = r.analysis.itt.treated_rate if name == "treated" else r.analysis.itt.control_rate
                rate = f"{_pct(iv.estimate)} ({_pct(iv.low).strip()} to {_pct(iv.high).strip()})"
            elif t.resolved:
                rate = _pct(t.achieved / t.resolved)
            lines.append(f"  {name:<9} {t.assigned:>7} {t.achieved:>8} {t.missed:>6} {t.excluded:>8} {t.pending:>7}  {rate}")
        lines.append("  " + funnel_text(r.funnel))
        if r.analysis is not None:
            a = r.analysis
            if a.itt is not None:
                d = a.itt.difference
                lines.append(f"  difference (intention to treat): {d.estimate * 100:+.1f} points "
                             f"({d.low * 100:+.1f} to {d.high * 100:+.1f}, Newcombe hybrid score 95% CI); "
                             f"relative risk {a.itt.ratio.estimate:.2f} ({a.itt.ratio.low:.2f} to {a.itt.ratio.high:.2f})")
            if a.per_protocol is not None:
                lines.append(f"  per-protocol (delivered only, shown beside ITT): treated "
                             f"{_pct(a.per_protocol.treated_rate.estimate).strip()}")
            if a.needed is not None:
                lines.append(f"  power: {a.needed.treated} treated and {a.needed.control} held out resolved entries "
                             "detect the configured lift at α 0.05, 80% power")
            lines.append(f"  verdict: {a.verdict}")
        med = {k: v for k, v in r.median_days.items() if v is not None}
        if med:
            lines.append("  median days to goal: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
        for arm, points in (r.cumulative_days or {}).items():
            lines.append(f"  achieved by day ({arm}, all periods): " + ", ".join(f"d{d} {n}" for d, n in points[:15]))
        lines.append("")
    lines.append("Read at a declared horizon (fixed-horizon intervals). Not seen: " + "; ".join(BLIND_SPOTS) + ".")
    return "\n".join(lines) + "\n"


def funnel_text(f: Funnel) -> str:
    """One line: eligible -> held out | triggered -> delivered, suppressed (reasons), achieved per arm."""
    why = ", ".join(f"{k} {n}" for k, n in f.suppressed.items())
    return (f"funnel: eligible {f.eligible} · held out {f.held_out} · triggered {f.triggered} · delivered {f.delivered}"
            f" · suppressed {sum(f.suppressed.values())}" + (f" ({why})" if why else "")
            + f" · achieved: treated {f.achieved_treated}, held out {f.achieved_held_out}")


def _arm_json(t: ArmTally | None) -> dict[str, int] | None:
    if t is None:
        return None
    return {"entries": t.assigned, "achieved": t.achieved, "missed": t.missed, "excluded": t.excluded,
            "pending": t.pending, "delivered_achieved": t.delivered_achieved, "delivered_missed": t.delivered_missed}


def _iv(iv: Any) -> dict[str, float] | None:
    if iv is None:
        return None
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high}


def as_json(reports: list[PeriodReport]) -> dict[str, Any]:
    items = []
    for r in reports:
        a = r.analysis
        items.append({
            "goal": r.goal_id, "experiment": r.experiment, "period": r.period,
            "breakdown": dict(r.breakdown),
            "funnel": r.funnel.as_json(),
            "treated" if r.held_out is not None else "all": _arm_json(r.treated),
            "held_out": _arm_json(r.held_out),
            "itt": None if a is None or a.itt is None else {
                "treated_rate": _iv(a.itt.treated_rate), "held_out_rate": _iv(a.itt.control_rate),
                "difference": _iv(a.itt.difference), "relative_risk": _iv(a.itt.ratio),
                "interval": "Wilson / Newcombe hybrid score / Katz log, 95%"},
            "per_protocol": None if a is None or a.per_protocol is None else {
                "treated_rate": _iv(a.per_protocol.treated_rate), "difference": _iv(a.per_protocol.difference)},
            "power": None if a is None or a.needed is None else {
                "treated_needed": a.needed.treated, "held_out_needed": a.needed.control, "enough": a.enough},
            "verdict": None if a is None else a.verdict,
            "median_days_to_goal": r.median_days,
            "cumulative_achieved_by_day": r.cumulative_days,
        })
    return {"items": items, "horizon": "fixed (read when the period's windows have closed)", "not_seen": list(BLIND_SPOTS)}


def as_csv(reports: list[PeriodReport]) -> str:
    """One row per group and arm; the breakdown columns present in the reports follow ``period``."""
    dims = [d for d in DIMENSIONS if any(d in dict(r.breakdown) for r in reports)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["goal", "experiment", "period", *dims, "arm", "entries", "achieved", "missed", "excluded", "pending",
                "rate", "rate_low", "rate_high", "triggered", "delivered", "suppressed", "suppressed_reasons"])
    for r in reports:
        arms = [("treated", r.treated), ("held_out", r.held_out)] if r.held_out is not None else [("all", r.treated)]
        values = dict(r.breakdown)
        for name, t in arms:
            if t is None:
                continue
            iv = None
            if r.analysis and r.analysis.itt:
                iv = r.analysis.itt.treated_rate if name == "treated" else r.analysis.itt.control_rate
            rate = iv.estimate if iv else (t.achieved / t.resolved if t.resolved else "")
            f = r.arm_funnels.get(name, Funnel())
            w.writerow([r.goal_id, r.experiment or "", r.period or "", *[values.get(d, "") for d in dims], name, t.assigned,
                        t.achieved, t.missed, t.excluded, t.pending, rate, iv.low if iv else "", iv.high if iv else "",
                        f.triggered, f.delivered, sum(f.suppressed.values()),
                        ";".join(f"{k}={n}" for k, n in f.suppressed.items())])
    return buf.getvalue()


def as_measure_reports(reports: list[PeriodReport], start: date, end: date) -> list[dict[str, Any]]:
    return [measure_report(r.goal_id, start, end, r.treated, r.held_out) for r in reports]
