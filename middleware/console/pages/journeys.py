"""``/journeys``: the loaded rules and journeys with their goals, and per goal the funnel and the
outcomes report (issue 15; analysts).

One source of truth: a goal's page reads :func:`middleware.outcomes.report.build` and
:func:`~middleware.outcomes.report.as_json`, the two calls ``GET /api/reports/outcomes/{goal}``
answers with, and renders that JSON (so a figure on the page is the API's figure). Keys the report
gains later (a ``funnel``, breakdowns by rule version, destination or period) are rendered
generically. Charts are server-rendered inline SVG (no script), each followed by a table with the
same numbers. Reports are aggregates: no patient appears here. The CSV and the FHIR MeasureReport
Bundle are served under the console's session (``/journeys/{goal}/report.csv``, ``.../measure-report``).
"""
from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from markupsafe import Markup, escape

from ...outcomes import report
from .. import access as a
from ..web import render

router = APIRouter()

#: keys of a report group the page lays out itself; any other key is shown as a breakdown table
KNOWN = frozenset({"goal", "experiment", "period", "treated", "all", "held_out", "itt", "per_protocol", "power", "verdict",
                   "median_days_to_goal", "cumulative_achieved_by_day", "funnel"})


def _engine(request: Request) -> Any:
    return request.app.state.runtime.engine


def _ruleset(request: Request) -> Any:
    return request.app.state.runtime.ruleset()


def pct(v: Any) -> str:
    """A proportion as the page shows it (one decimal), ``n/a`` when absent."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v) * 100:.1f}%"


def points(v: Any) -> str:
    """A difference of proportions in percentage points, signed."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{float(v) * 100:+.1f}"


def ratio(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, float) and math.isinf(v)):
        return "n/a"
    return f"{float(v):.2f}"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return None if math.isnan(f) or math.isinf(f) else f


# -- charts (inline SVG; classes styled by console.css; no style attributes under the CSP) -----

def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    t = escape(title)
    return Markup(f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{t}" '
                  f'preserveAspectRatio="xMinYMin meet"><title>{t}</title>{"".join(body)}</svg>')


def funnel_svg(steps: list[tuple[str, int]], title: str) -> Markup:
    """Horizontal bars, one per funnel step, the longest as wide as the chart."""
    top = max([n for _, n in steps] + [1])
    w, label_w, row = 640, 190, 26
    body = []
    for i, (label, n) in enumerate(steps):
        y = 6 + i * row
        bw = (w - label_w - 60) * n / top
        body.append(f'<text class="lbl" x="{label_w - 8}" y="{y + 14}" text-anchor="end">{escape(label)}</text>'
                    f'<rect class="bar" x="{label_w}" y="{y}" width="{bw:.1f}" height="{row - 8}"/>'
                    f'<text class="val" x="{label_w + bw + 6:.1f}" y="{y + 14}">{n}</text>')
    return _svg(w, 12 + row * len(steps), title, body)


def rates_svg(arms: list[tuple[str, float | None, float | None, float | None]], title: str) -> Markup:
    """Each arm's rate as a bar from 0 to 100% with its interval as a whisker."""
    w, label_w, row = 640, 110, 34
    span = w - label_w - 20
    body = [f'<line class="axis" x1="{label_w}" y1="2" x2="{label_w}" y2="{8 + row * len(arms)}"/>']
    for tick in (0, 25, 50, 75, 100):
        x = label_w + span * tick / 100
        body.append(f'<line class="grid" x1="{x:.1f}" y1="2" x2="{x:.1f}" y2="{8 + row * len(arms)}"/>'
                    f'<text class="tick" x="{x:.1f}" y="{20 + row * len(arms)}" text-anchor="middle">{tick}%</text>')
    for i, (label, est, low, high) in enumerate(arms):
        y = 8 + i * row
        body.append(f'<text class="lbl" x="{label_w - 8}" y="{y + 16}" text-anchor="end">{escape(label)}</text>')
        if est is not None:
            body.append(f'<rect class="bar arm{i}" x="{label_w}" y="{y + 4}" width="{span * est:.1f}" height="{row - 14}"/>')
        if low is not None and high is not None:
            x1, x2, ym = label_w + span * low, label_w + span * high, y + 4 + (row - 14) / 2
            body.append(f'<line class="whisker" x1="{x1:.1f}" y1="{ym:.1f}" x2="{x2:.1f}" y2="{ym:.1f}"/>'
                        f'<line class="whisker" x1="{x1:.1f}" y1="{ym - 6:.1f}" x2="{x1:.1f}" y2="{ym + 6:.1f}"/>'
                        f'<line class="whisker" x1="{x2:.1f}" y1="{ym - 6:.1f}" x2="{x2:.1f}" y2="{ym + 6:.1f}"/>')
    return _svg(w, 28 + row * len(arms), title, body)


def difference_svg(est: float, low: float, high: float, title: str) -> Markup:
    """The difference (treated minus held out) as a point with its interval, around a zero line."""
    w, h, pad = 640, 56, 40
    reach = max(abs(low), abs(high), abs(est), 0.01) * 1.15
    def x(v: float) -> float:
        return pad + (w - 2 * pad) * (v + reach) / (2 * reach)
    body = [f'<line class="axis" x1="{pad}" y1="30" x2="{w - pad}" y2="30"/>',
            f'<line class="zero" x1="{x(0):.1f}" y1="8" x2="{x(0):.1f}" y2="44"/>',
            f'<text class="tick" x="{x(0):.1f}" y="54" text-anchor="middle">0</text>',
            f'<text class="tick" x="{pad}" y="54" text-anchor="start">{-reach * 100:+.0f} pts</text>',
            f'<text class="tick" x="{w - pad}" y="54" text-anchor="end">{reach * 100:+.0f} pts</text>',
            f'<line class="whisker" x1="{x(low):.1f}" y1="22" x2="{x(low):.1f}" y2="38"/>',
            f'<line class="whisker" x1="{x(high):.1f}" y1="22" x2="{x(high):.1f}" y2="38"/>',
            f'<line class="whisker" x1="{x(low):.1f}" y1="30" x2="{x(high):.1f}" y2="30"/>',
            f'<circle class="point" cx="{x(est):.1f}" cy="30" r="5"/>']
    return _svg(w, h, title, body)


def curve_svg(curves: dict[str, list[tuple[int, int]]], title: str, until: int = 1) -> Markup:
    """Cumulative entries reaching the goal by day after the anchor, one step line per arm, drawn to
    ``until`` (the goal window's last day) or the last day seen, whichever is later."""
    w, h, left, bottom = 640, 220, 44, 28
    last_day = max([d for pts in curves.values() for d, _ in pts] + [until, 1])
    top = max([n for pts in curves.values() for _, n in pts] + [1])
    def x(d: float) -> float:
        return left + (w - left - 10) * d / last_day
    def y(n: float) -> float:
        return h - bottom - (h - bottom - 10) * n / top
    body = [f'<line class="axis" x1="{left}" y1="{y(0):.1f}" x2="{w - 10}" y2="{y(0):.1f}"/>',
            f'<line class="axis" x1="{left}" y1="10" x2="{left}" y2="{y(0):.1f}"/>',
            f'<text class="tick" x="{left - 4}" y="{y(top) + 4:.1f}" text-anchor="end">{top}</text>',
            f'<text class="tick" x="{left - 4}" y="{y(0):.1f}" text-anchor="end">0</text>',
            f'<text class="tick" x="{x(0):.1f}" y="{h - 10}" text-anchor="middle">day 0</text>',
            f'<text class="tick" x="{x(last_day):.1f}" y="{h - 10}" text-anchor="end">day {last_day}</text>']
    for i, (arm, pts) in enumerate(sorted(curves.items())):
        path, prev = [f"{x(0):.1f},{y(0):.1f}"], 0
        for d, n in pts:
            path += [f"{x(d):.1f},{y(prev):.1f}", f"{x(d):.1f},{y(n):.1f}"]
            prev = n
        path.append(f"{x(last_day):.1f},{y(prev):.1f}")
        name = escape(arm.replace("_", " ") + ("", " (dashed)")[i % 2])
        body.append(f'<polyline class="curve arm{i}" points="{" ".join(path)}"/>'
                    f'<text class="legend arm{i}" x="{w - 14}" y="{24 + 16 * i}" text-anchor="end">{name}</text>')
    return _svg(w, h, title, body)


# -- what a report group shows -------------------------------------------------------------

def funnel_of(item: dict[str, Any]) -> tuple[list[tuple[str, int]], bool]:
    """The funnel steps of one report group: the report's own ``funnel`` when it has one (any keys,
    nested counts flattened as ``key: sub``), else what the arm counts give. Second: from the report."""
    f = item.get("funnel")
    if isinstance(f, dict) and f:
        steps: list[tuple[str, int]] = []
        for k, v in f.items():
            if isinstance(v, dict):
                steps += [(f"{k.replace('_', ' ')}: {sk.replace('_', ' ')}", int(sv)) for sk, sv in v.items() if _num(sv) is not None]
            elif _num(v) is not None:
                steps.append((k.replace("_", " "), int(v)))
        return steps, True
    treated = item.get("treated") or item.get("all") or {}
    held = item.get("held_out")
    steps = [("eligible (entries)", int(treated.get("entries", 0)) + int((held or {}).get("entries", 0)))]
    if held is not None:
        steps.append(("held out", int(held.get("entries", 0))))
    steps.append(("triggered", int(treated.get("entries", 0))))
    steps.append(("delivered (resolved)", int(treated.get("delivered_achieved", 0)) + int(treated.get("delivered_missed", 0))))
    steps.append(("achieved" + (": treated" if held is not None else ""), int(treated.get("achieved", 0))))
    if held is not None:
        steps.append(("achieved: held out", int(held.get("achieved", 0))))
    return steps, False


def cells(value: Any) -> list[tuple[str, str]]:
    """A breakdown value flattened to (path, shown value) rows, for keys the page has no layout for."""
    out: list[tuple[str, str]] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix} · {k}" if prefix else str(k), sub)
        elif isinstance(v, (list, tuple)) and v and all(isinstance(e, (dict, list, tuple)) for e in v):
            for i, sub in enumerate(v):
                walk(f"{prefix} [{i + 1}]".strip(), sub)
        else:
            out.append((prefix, "" if v is None else str(v)))

    walk("", value)
    return out


def view_of(item: dict[str, Any], window_to: int = 1) -> dict[str, Any]:
    """What the template needs for one report group (charts built here, numbers kept raw for the tables)."""
    itt = item.get("itt") or None
    label = (f"experiment {item['experiment']} · period {item['period']}" if item.get("experiment") else "no holdout")
    arms: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    if item.get("held_out") is not None:
        arms = [("treated", item.get("treated") or {}, (itt or {}).get("treated_rate")),
                ("held out", item["held_out"], (itt or {}).get("held_out_rate"))]
    else:
        arms = [("all", item.get("all") or item.get("treated") or {}, None)]
    rate_rows: list[dict[str, Any]] = []
    for name, tally, iv in arms:
        resolved = int(tally.get("achieved", 0)) + int(tally.get("missed", 0))
        est = _num((iv or {}).get("estimate")) if iv else (tally.get("achieved", 0) / resolved if resolved else None)
        rate_rows.append({"arm": name, "tally": tally, "rate": est, "low": _num((iv or {}).get("low")),
                          "high": _num((iv or {}).get("high"))})
    steps, reported = funnel_of(item)
    charts: dict[str, Markup] = {"funnel": funnel_svg(steps, f"Funnel, {label}")}
    if any(r["rate"] is not None for r in rate_rows):
        charts["rates"] = rates_svg([(r["arm"], r["rate"], r["low"], r["high"]) for r in rate_rows],
                                    f"Rate reaching the goal per arm with 95% intervals, {label}")
    diff = (itt or {}).get("difference") or {}
    if all(_num(diff.get(k)) is not None for k in ("estimate", "low", "high")):
        charts["difference"] = difference_svg(diff["estimate"], diff["low"], diff["high"],
                                              f"Difference treated minus held out with its 95% interval, {label}")
    curves = {arm: [(int(d), int(n)) for d, n in pts] for arm, pts in (item.get("cumulative_achieved_by_day") or {}).items() if pts}
    if curves:
        charts["curve"] = curve_svg(curves, "Entries reaching the goal by day after the anchor (all periods)", window_to)
    extra = {k: cells(v) for k, v in item.items() if k not in KNOWN and v not in (None, {}, [])}
    return {"label": label, "item": item, "itt": itt, "rates": rate_rows, "funnel": steps, "funnel_reported": reported,
            "charts": charts, "curves": curves, "extra": extra}


def rules_of(rs: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The loaded rule set as (journeys with their step rules, standalone rules), each with its goal."""
    journeys: dict[str, dict[str, Any]] = {}
    rules: list[dict[str, Any]] = []
    base = Path(rs.directory).resolve()
    for cr in rs.rules:
        r = cr.rule
        try:
            where = str(Path(cr.path).resolve().relative_to(base))
        except ValueError:
            where = Path(cr.path).name
        row = {"id": r.id, "description": r.description, "on": list(r.on), "purpose": str(r.purpose), "channel": r.channel,
               "enabled": r.enabled, "goal": r.goal.id if r.goal else None, "where": f"{where}:{cr.line}",
               "holdout": (f"{r.holdout.share * 100:g}% held out, experiment {r.holdout.experiment or r.id}"
                           if r.holdout else None)}
        if cr.journey is not None:
            j = journeys.setdefault(cr.journey.journey_id, {"id": cr.journey.journey_id, "steps": [], "goal": None})
            j["steps"].append(row | {"step": cr.journey.step, "step_id": cr.journey.step_id})
            j["goal"] = j["goal"] or row["goal"]
        else:
            rules.append(row)
    return list(journeys.values()), rules


@router.get("/journeys")
def journeys_page(request: Request, viewer: Annotated[a.Viewer, a.need(a.JOURNEYS)]) -> Response:
    rs = _ruleset(request)
    journeys, rules = rules_of(rs)
    entries = dict(report.goals(_engine(request)))
    defined = {r["goal"] for r in rules if r["goal"]} | {j["goal"] for j in journeys if j["goal"]}
    goals = [{"id": g, "entries": entries.get(g, 0), "loaded": g in defined} for g in sorted(defined | set(entries))]
    return render(request, "journeys.html", {"ruleset_version": rs.version, "journeys": journeys, "rules": rules,
                                             "goals": goals})


def _known_goal(request: Request, goal_id: str) -> bool:
    if goal_id in {g for g, _ in report.goals(_engine(request))}:
        return True
    return any(cr.rule.goal is not None and cr.rule.goal.id == goal_id for cr in _ruleset(request).rules)


@router.get("/journeys/{goal_id}")
def goal_page(request: Request, goal_id: str, viewer: Annotated[a.Viewer, a.need(a.JOURNEYS)],
              min_lift: float = Query(0.05, gt=0, lt=1)) -> Response:
    if not _known_goal(request, goal_id):
        raise HTTPException(404, "no such goal")
    data = report.as_json(report.build(_engine(request), goal_id, min_lift=min_lift))  # what the API answers
    rs = _ruleset(request)
    journeys, rules = rules_of(rs)
    today = date.today()
    window_to = max([cr.rule.goal.window.to for cr in rs.rules if cr.rule.goal is not None and cr.rule.goal.id == goal_id] + [1])
    return render(request, "journey_goal.html", {
        "goal_id": goal_id, "report": data, "groups": [view_of(i, window_to) for i in data["items"]],
        "extra_top": {k: cells(v) for k, v in data.items() if k not in ("items", "horizon", "not_seen")},
        "rules": [r for r in rules if r["goal"] == goal_id], "journeys": [j for j in journeys if j["goal"] == goal_id],
        "pct": pct, "points": points, "ratio": ratio, "min_lift": min_lift,
        "mr_start": (today - timedelta(days=90)).isoformat(), "mr_end": today.isoformat()})


@router.get("/journeys/{goal_id}/report.csv")
def goal_csv(request: Request, goal_id: str, viewer: Annotated[a.Viewer, a.need(a.JOURNEYS)]) -> Response:
    if not _known_goal(request, goal_id):
        raise HTTPException(404, "no such goal")
    text = report.as_csv(report.build(_engine(request), goal_id))
    return PlainTextResponse(text, media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="outcomes-{goal_id}.csv"'})


@router.get("/journeys/{goal_id}/measure-report")
def goal_measure_report(request: Request, goal_id: str, start: date, end: date,
                        viewer: Annotated[a.Viewer, a.need(a.JOURNEYS)]) -> Response:
    if end < start:
        raise HTTPException(422, "end is before start")
    if not _known_goal(request, goal_id):
        raise HTTPException(404, "no such goal")
    items = report.as_measure_reports(report.build(_engine(request), goal_id), start, end)
    return JSONResponse({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in items]},
                        media_type="application/fhir+json",
                        headers={"Content-Disposition": f'attachment; filename="measure-report-{goal_id}.json"'})
