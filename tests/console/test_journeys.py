"""The journeys page over the real app (TestClient; SQLite or PostgreSQL per CARELOOP_TEST_BACKEND):
journey entries made by running SIU messages through the real pipeline (a goal with a 50% holdout),
then the page's figures compared with what ``GET /api/reports/outcomes/{goal}`` answers."""
from __future__ import annotations

import hashlib
import html
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from middleware.console.pages.journeys import funnel_of, pct, points, ratio
from middleware.outcomes.track import close_windows
from middleware.pipeline.process import Processor
from middleware.storage.inbox import InboundRecord, InboxWriter
from tests.outcomes.test_pipeline_outcomes import RULE
from tests.support.console import client, console_runtime, sign_in, write_users
from tests.support.hl7msgs import siu

GOAL = "noshow-rebooked-14d"
N = 40


def seed(engine: Any, rs: Any, n: int = N) -> None:
    """``n`` no-shows; every third patient rebooks within the window, every third too late."""
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=40)
    msgs = []
    for i in range(n):
        mrn, start = f"MRN7{i:05d}", t0 + timedelta(days=1)
        msgs.append(siu("S12", control=f"B{i}", mrn=mrn, appt=f"A{i}", start=start, sent=t0))
        msgs.append(siu("S26", control=f"N{i}", mrn=mrn, appt=f"A{i}", start=start, status="Noshow", sent=start + timedelta(hours=2)))
        if i % 3 == 0:
            msgs.append(siu("S12", control=f"R{i}", mrn=mrn, appt=f"C{i}", start=start + timedelta(days=20), sent=start + timedelta(days=4)))
        elif i % 3 == 1:
            msgs.append(siu("S12", control=f"L{i}", mrn=mrn, appt=f"D{i}", start=start + timedelta(days=30), sent=start + timedelta(days=20)))
    InboxWriter(engine).write_batch([InboundRecord(source="default", channel="mllp", raw=m, status="received",
                                                   sha256=hashlib.sha256(m).hexdigest()) for m in msgs])
    Processor(engine, lambda: rs).drain()
    while close_windows(engine, rs, datetime.now(timezone.utc)):
        pass


def winback_mappings(mappings_dir: Path) -> Path:
    for f in (mappings_dir / "rules").glob("*.yaml"):
        f.unlink()
    (mappings_dir / "rules" / "winback.yaml").write_text(RULE)
    return mappings_dir


@pytest.fixture
def rt(db_url: str, mappings_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    runtime = console_runtime(db_url, winback_mappings(mappings_dir), write_users(tmp_path / "users.yaml"))
    seed(runtime.engine, runtime.ruleset())
    return runtime


def row_cells(page: str, arm: str) -> dict[str, str]:
    """``data-field`` -> ``data-value`` of the rates table row of ``arm``."""
    m = re.search(rf'<tr data-arm="{arm}">(.*?)</tr>', page, re.S)
    assert m, f"no row for arm {arm}"
    return {f: html.unescape(v) for f, v in re.findall(r'data-field="(\w+)" data-value="([^"]*)"', m.group(1))}


def measure_cell(page: str, measure: str) -> str:
    m = re.search(rf'<tr data-measure="{measure}">.*?data-value="([^"]*)">([^<]*)<', page, re.S)
    assert m, f"no row for {measure}"
    return m.group(1)


def test_journeys_page_figures_equal_the_apis_json(rt) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    sign_in(c, "ana")
    listing = c.get("/journeys")
    assert listing.status_code == 200
    assert f'href="/journeys/{GOAL}"' in listing.text and "noshow-winback" in listing.text
    assert rt.ruleset().version in listing.text and "winback.yaml:" in listing.text  # rule with file:line

    api = c.get(f"/api/reports/outcomes/{GOAL}").json()
    page = c.get(f"/journeys/{GOAL}")
    assert page.status_code == 200
    (item,) = api["items"]
    assert item["treated"]["entries"] + item["held_out"]["entries"] == N
    for arm, key, rate_key in (("treated", "treated", "treated_rate"), ("held out", "held_out", "held_out_rate")):
        cells = row_cells(page.text, arm)
        for field in ("entries", "achieved", "missed", "excluded", "pending"):
            assert int(cells[field]) == item[key][field], (arm, field)
        rate = item["itt"][rate_key]
        assert float(cells["rate"]) == rate["estimate"]
        assert f"{pct(rate['low'])} to {pct(rate['high'])}" in page.text
    diff, rr = item["itt"]["difference"], item["itt"]["relative_risk"]
    assert float(measure_cell(page.text, "difference")) == diff["estimate"]
    assert f"{points(diff['low'])} to {points(diff['high'])}" in page.text
    assert float(measure_cell(page.text, "relative_risk")) == rr["estimate"]
    assert f"{ratio(rr['low'])} to {ratio(rr['high'])}" in page.text
    assert html.escape(item["verdict"]) in page.text
    assert f"{item['power']['treated_needed']} treated and {item['power']['held_out_needed']} held-out" in page.text
    # the charts are inline SVG with a text alternative; the funnel matches the report's counts
    assert page.text.count('<svg class="chart"') >= 4 and 'role="img"' in page.text
    steps, reported = funnel_of(item)
    assert ("held out", item["held_out"]["entries"]) in steps and ("triggered", item["treated"]["entries"]) in steps
    assert not reported or "funnel" in item
    for label, count in steps:
        assert f'<th scope="row">{html.escape(label)}</th><td data-value="{count}">' in page.text
    # the time-to-outcome curve: the last cumulative count per arm is the arm's achieved entries
    for arm, pts in item["cumulative_achieved_by_day"].items():
        assert pts[-1][1] == item[arm]["achieved"]
        assert f"day {pts[-1][0]}: {pts[-1][1]}" in page.text

    # the exports equal the API's (CSV; FHIR MeasureReport Bundle), under the session
    csv_page = c.get(f"/journeys/{GOAL}/report.csv")
    assert csv_page.status_code == 200 and csv_page.text == c.get(f"/api/reports/outcomes/{GOAL}?format=csv").text
    q = "start=2026-01-01&end=2026-12-31"
    mr = c.get(f"/journeys/{GOAL}/measure-report?{q}")
    assert mr.status_code == 200 and mr.headers["content-type"].startswith("application/fhir+json")
    assert mr.json() == c.get(f"/api/reports/outcomes/{GOAL}/measure-report?{q}").json()
    assert c.get(f"/journeys/{GOAL}/measure-report?start=2026-12-31&end=2026-01-01").status_code == 422
    assert c.get("/journeys/no-such-goal").status_code == 404


def test_a_reported_funnel_is_rendered_whatever_its_keys() -> None:
    item = {"funnel": {"eligible": 10, "held_out": 1, "triggered": 9, "delivered": 8,
                       "suppressed": {"opt_out": 1, "quiet_hours": 0}, "achieved": {"treated": 4, "held_out": 0}}}
    steps, reported = funnel_of(item)
    assert reported
    assert steps == [("eligible", 10), ("held out", 1), ("triggered", 9), ("delivered", 8), ("suppressed: opt out", 1),
                     ("suppressed: quiet hours", 0), ("achieved: treated", 4), ("achieved: held out", 0)]


def test_breakdowns_the_page_does_not_know_are_shown_as_tables(rt, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from middleware.outcomes import report

    real = report.as_json

    def with_breakdown(reports: Any) -> dict[str, Any]:
        out = real(reports)
        for it in out["items"]:
            it["funnel"] = {"eligible": 40, "held_out": 20, "triggered": 20, "delivered": 19,
                            "suppressed": {"quiet_hours": 1}, "achieved": {"treated": 7, "held_out": 7}}
            it["by_rule_version"] = [{"version": "v-abc", "entries": 40}]
        return out

    monkeypatch.setattr(report, "as_json", with_breakdown)
    c = client(rt)
    sign_in(c, "ana")
    page = c.get(f"/journeys/{GOAL}").text
    assert "By rule version" in page and '<th scope="row">[1] · version</th><td>v-abc</td>' in page
    assert '<th scope="row">suppressed: quiet hours</th><td data-value="1">' in page
    assert "From the report&#39;s arm counts" not in page


def test_an_operator_is_refused_the_journeys(rt) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    sign_in(c, "otto")
    r = c.get("/journeys")
    assert r.status_code == 403 and "analyst" in r.text
    assert c.get(f"/journeys/{GOAL}/report.csv").status_code == 403
    anonymous = client(rt)
    assert anonymous.get(f"/journeys/{GOAL}").status_code == 303
