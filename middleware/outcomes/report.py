"""Outcome reports: per goal and experiment period, each arm's entries by outcome, the ITT
comparison with per-protocol beside it, the power note and a plain-language verdict; as a
terminal table, JSON, CSV or FHIR MeasureReports.

Reports are read at a declared horizon: the intervals are fixed-horizon (not sequential), so
a report is meaningful once its period's windows have closed (``pending`` shows how many are
still open). They cannot see outcomes at other organisations, reminders the EHR sent by itself
(portal reminders), or patients whose events never reach careloop; every report says so.
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.engine import Engine

from middleware.outcomes.analysis import Analysis, ArmTally, analyse
from middleware.outcomes.measure import measure_report
from middleware.storage.queries import outcomes as q
from middleware.storage.sql import unit

BLIND_SPOTS = ("outcomes at other organisations", "reminders the EHR or portal sent by itself",
               "patients whose events never reach careloop")


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


def build(engine: Engine, goal_id: str, *, min_lift: float = 0.05, holdout_share: float | None = None) -> list[PeriodReport]:
    with unit(engine) as u:
        rows = u.all(q.TALLY.name, goal_id=goal_id)
        groups: dict[tuple[str | None, str | None], list[q.Tally]] = defaultdict(list)
        for r in rows:
            groups[(r.experiment, r.period)].append(r)
        medians = {key: _medians(u, goal_id, key[0], key[1], rs) for key, rs in groups.items()}
    curve = cumulative_by_day(engine, goal_id) if groups else None
    out = []
    for (exp, period), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")):
        if exp is None:
            out.append(PeriodReport(goal_id, None, None, _tally(rs), None, None, medians[(exp, period)], curve))
            continue
        treated = _tally([r for r in rs if r.arm == "treated"])
        held = _tally([r for r in rs if r.arm == "held_out"])
        share = holdout_share
        if share is None:
            share = held.assigned / max(1, held.assigned + treated.assigned) or 0.1
        share = min(max(share, 0.01), 0.99)
        a = analyse(treated, held, min_lift=min_lift, holdout_share=share)
        out.append(PeriodReport(goal_id, exp, period, treated, held, a, medians[(exp, period)], curve))
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
        lines.append(head)
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
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["goal", "experiment", "period", "arm", "entries", "achieved", "missed", "excluded", "pending",
                "rate", "rate_low", "rate_high"])
    for r in reports:
        arms = [("treated", r.treated), ("held_out", r.held_out)] if r.held_out is not None else [("all", r.treated)]
        for name, t in arms:
            if t is None:
                continue
            iv = None
            if r.analysis and r.analysis.itt:
                iv = r.analysis.itt.treated_rate if name == "treated" else r.analysis.itt.control_rate
            rate = iv.estimate if iv else (t.achieved / t.resolved if t.resolved else "")
            w.writerow([r.goal_id, r.experiment or "", r.period or "", name, t.assigned, t.achieved, t.missed,
                        t.excluded, t.pending, rate, iv.low if iv else "", iv.high if iv else ""])
    return buf.getvalue()


def as_measure_reports(reports: list[PeriodReport], start: date, end: date) -> list[dict[str, Any]]:
    return [measure_report(r.goal_id, start, end, r.treated, r.held_out) for r in reports]
