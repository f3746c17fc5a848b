"""Reports from stored entries (SQLite and PostgreSQL): counts per arm equal what was stored,
intervals and verdict, JSON/CSV/MeasureReport; the CLI's one-line errors."""
from __future__ import annotations

import csv
import io
import json
from datetime import date
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from middleware.cli import main
from middleware.outcomes import report
from middleware.storage.db import init_db, make_engine
from middleware.storage.queries import outcomes as q
from middleware.storage.sql import unit


def seed(engine: Any, arm: str | None, status: str, n: int, start: int, delivered: bool = False,
         experiment: str | None = "noshow-rebook", version: str = "v1", destination: str | None = "webhook",
         month: str | None = "2026-11", week: str | None = "2026-W47") -> None:
    with unit(engine, write=True) as u:
        for i in range(start, start + n):
            u.run(q.OPEN_ENTRY.name, entry_key=f"noshow-14d|r|Appointment/{i}", goal_id="noshow-14d", rule_id="r",
                  journey_id=None, ruleset_version=version, patient_key=f"pk{i}", patient_id=None, origin_event_id=i,
                  origin_resource_key=f"Appointment/{i}", trigger_id=None if arm == "held_out" else i,
                  experiment=experiment if arm else None, period="2026Q4" if arm else None, arm=arm, anchor_at=0.0,
                  window_opens=0.0, window_closes=1.0, destination=destination, anchor_month=month, anchor_week=week,
                  now=1.0)
            row = u.one(q.FOR_PATIENT.name, patient_key=f"pk{i}")
            u.run(q.SETTLE.name, id=row.id, status=status, event_id=None, achieved_at=None,
                  elapsed_s=86400.0 * 3 if status == "achieved" else None, now=2.0)
            if delivered:
                u.run(q.MARK_DELIVERED.name, trigger_id=i, now=3.0)


@pytest.fixture
def engine(db_url: str) -> Any:
    eng = make_engine(db_url)
    init_db(eng)
    yield eng
    eng.dispose()


def test_report_counts_intervals_and_formats(engine: Any, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Newcombe's example as stored entries: 56/70 treated vs 48/80 held out, plus excluded and pending
    seed(engine, "treated", "achieved", 56, 0, delivered=True)
    seed(engine, "treated", "missed", 14, 100)
    seed(engine, "treated", "pending", 5, 200)
    seed(engine, "held_out", "achieved", 48, 300)
    seed(engine, "held_out", "missed", 32, 400)
    seed(engine, "held_out", "excluded", 2, 500)
    (r,) = report.build(engine, "noshow-14d")
    assert (r.treated.achieved, r.treated.missed, r.treated.pending) == (56, 14, 5)
    assert (r.held_out.achieved, r.held_out.missed, r.held_out.excluded) == (48, 32, 2)  # type: ignore[union-attr]
    assert r.analysis is not None and r.analysis.itt is not None
    d = r.analysis.itt.difference
    assert (round(d.low, 4), round(d.high, 4)) == (0.0524, 0.3339)
    assert r.analysis.per_protocol is not None and r.analysis.per_protocol.treated_rate.estimate == 1.0
    assert r.analysis.verdict.startswith("not enough patients yet")
    assert r.median_days["treated"] == pytest.approx(3.0)
    assert r.cumulative_days == {"held_out": [(3, 48)], "treated": [(3, 56)]}  # every seeded goal reached on day 3
    text = report.as_text([r])
    assert "+20.0 points (+5.2 to +33.4" in text and "Not seen:" in text
    rows = list(csv.DictReader(io.StringIO(report.as_csv([r]))))
    assert [(x["arm"], x["entries"]) for x in rows] == [("treated", "75"), ("held_out", "82")]
    assert [(x["triggered"], x["delivered"]) for x in rows] == [("75", "56"), ("0", "0")]
    assert main(["report", "noshow-14d", "--format", "json", "--database-url", db_url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"][0]["held_out"]["entries"] == 82
    assert main(["report", "--format", "measure", "--start", "2026-10-01", "--end", "2026-12-31",
                 "--database-url", db_url]) == 0
    bundle = Bundle.model_validate_json(capsys.readouterr().out)
    assert bundle.entry[0].resource.get_resource_type() == "MeasureReport"


def test_entries_without_holdout_report_one_arm(engine: Any) -> None:
    seed(engine, None, "achieved", 3, 0)
    seed(engine, None, "missed", 1, 10)
    (r,) = report.build(engine, "noshow-14d")
    assert r.held_out is None and r.analysis is None and r.treated.achieved == 3
    assert "no holdout" in report.as_text([r])
    m = report.as_measure_reports([r], date(2026, 1, 1), date(2026, 1, 31))[0]
    assert m["group"][0]["measureScore"]["value"] == 0.75


def test_cli_unknown_goal_is_one_line(engine: Any, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed(engine, None, "achieved", 1, 0)
    assert main(["report", "noshow-41d", "--database-url", db_url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "noshow-14d" in err
    assert main(["report", "--format", "measure", "--database-url", db_url]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err


def test_reports_api(engine: Any, db_url: str) -> None:
    from fastapi.testclient import TestClient

    from middleware.api.app import create_app
    from middleware.service import Runtime
    from middleware.settings import Settings
    from tests.conftest import REPO

    seed(engine, "treated", "achieved", 6, 0)
    seed(engine, "held_out", "missed", 2, 100)
    rt = Runtime(Settings(database_url=db_url, mappings_dir=REPO / "mappings",
                          contact_key_secret="reports-test-secret-0123456789abcdef"))
    with TestClient(create_app(rt)) as client:
        got = client.get("/api/reports/outcomes").json()
        assert got["items"][0]["treated"]["achieved"] == 6 and got["items"][0]["held_out"]["missed"] == 2
        assert client.get("/api/reports/outcomes/nope").status_code == 404
        csv_text = client.get("/api/reports/outcomes/noshow-14d?format=csv").text
        assert csv_text.startswith("goal,experiment,period,arm")
        by = client.get("/api/reports/outcomes/noshow-14d?by=destination,month&by=rule_version").json()["items"]
        assert [i["breakdown"] for i in by] == [{"rule_version": "v1", "destination": "webhook", "month": "2026-11"}]
        assert by[0]["funnel"] == {"eligible": 8, "held_out": 2, "triggered": 6, "delivered": 0, "suppressed": {},
                                   "achieved": {"treated": 6, "held_out": 0}}
        bad = client.get("/api/reports/outcomes/noshow-14d?by=weekday")
        assert bad.status_code == 422 and "unknown breakdown 'weekday'" in bad.text
        assert client.get("/api/reports/outcomes/noshow-14d?by=week&format=csv").text.startswith(
            "goal,experiment,period,week,arm")
        mr = client.get("/api/reports/outcomes/noshow-14d/measure-report?start=2026-10-01&end=2026-12-31")
        assert mr.headers["content-type"].startswith("application/fhir+json")
        assert mr.json()["entry"][0]["resource"]["period"] == {"start": "2026-10-01", "end": "2026-12-31"}
        assert client.get("/api/reports/outcomes/noshow-14d/measure-report?start=2026-12-31&end=2026-10-01").status_code == 422


def test_patient_export_is_deidentified_unless_a_dua_is_recorded(engine: Any, db_url: str, tmp_path: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from middleware.storage.tables import AdminAudit  # noqa: F401

    seed(engine, "treated", "achieved", 3, 0)
    out = tmp_path / "x.csv"
    assert main(["report", "noshow-14d", "--export", str(out), "--database-url", db_url]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and len({r["export_id"] for r in rows}) == 3
    assert "anchor_date" not in rows[0] and rows[0]["year"] == "1970" and rows[0]["days_to_outcome"] == "3"
    text = out.read_text()
    assert "pk0" not in text and "Appointment/" not in text  # no key, no resource id
    again = tmp_path / "y.csv"
    assert main(["report", "noshow-14d", "--export", str(again), "--database-url", db_url]) == 0
    assert not {r["export_id"] for r in rows} & {r["export_id"] for r in csv.DictReader(again.open())}
    capsys.readouterr()
    assert main(["report", "noshow-14d", "--export", str(out), "--limited-data-set", "--database-url", db_url]) == 2
    assert "--dua" in capsys.readouterr().err
    assert main(["report", "noshow-14d", "--export", str(out), "--limited-data-set", "--dua", "DUA-2026-7",
                 "--database-url", db_url]) == 0
    assert "anchor_date" in out.read_text().splitlines()[0]
    from middleware.delivery.admin_audit import query as audit_query

    items, _ = audit_query(engine, action="outcomes.export_lds", actor=None, since=None, before_id=None, limit=10)
    assert items and items[0]["reason"] == "DUA-2026-7" and items[0]["target_id"] == "noshow-14d"


def add_trigger(engine: Any, trigger_id: int, status: str, reason: str | None,
                delivery: tuple[str, str | None] | None = None) -> None:
    """A trigger (and optionally one delivery) going through the status changes the scheduler,
    the pipeline and the delivery worker make: inserted pending, then updated."""
    from sqlalchemy import insert, update
    from sqlmodel import SQLModel

    t = SQLModel.metadata.tables
    with engine.begin() as c:
        c.execute(insert(t["trigger"]).values(
            id=trigger_id, rule_id="r", ruleset_version="v1", name="t", purpose="care-coordination", destinations="webhook",
            patient_key=f"pk{trigger_id}", resource_key=f"Appointment/{trigger_id}", origin_key=f"r|event:{trigger_id}",
            event_id=trigger_id, due_at=1.0, status="pending", payload="{}", created_at=1.0, updated_at=1.0))
        c.execute(update(t["trigger"]).where(t["trigger"].c.id == trigger_id).values(status=status, reason=reason))
        if delivery is not None:
            c.execute(insert(t["delivery"]).values(
                trigger_id=trigger_id, destination="webhook", idempotency_key=f"idem-{trigger_id}", status="pending",
                attempts=0, next_attempt_at=1.0, created_at=1.0, updated_at=1.0))
            c.execute(update(t["delivery"]).where(t["delivery"].c.trigger_id == trigger_id).values(
                status=delivery[0], last_error=delivery[1], attempts=1))


def test_breakdowns_split_entries_and_the_funnel_names_suppression_reasons(engine: Any, db_url: str,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # rule-set v1 to the webhook in November, v2 to sms in December; entries opened before
    # revision 0010 have no destination / month / week and show as "unknown"
    seed(engine, "treated", "achieved", 4, 0, delivered=True)
    seed(engine, "treated", "missed", 3, 10)
    seed(engine, "held_out", "achieved", 2, 20)
    seed(engine, "held_out", "missed", 3, 30)
    seed(engine, "treated", "achieved", 5, 40, version="v2", destination="sms", month="2026-12", week="2026-W49")
    seed(engine, "held_out", "missed", 1, 50, version="v2", destination="sms", month="2026-12", week="2026-W49")
    # stopped at evaluation, before its entry was opened: the entry takes the trigger's reason
    add_trigger(engine, 60, "suppressed", "patient is deceased")
    seed(engine, "treated", "pending", 2, 60, destination=None, month=None, week=None)
    for i in range(4):
        add_trigger(engine, i, "fired", None, ("delivered", None))
    add_trigger(engine, 10, "suppressed", "cap reached: 3 reminders to this patient this week (limit 3)")
    add_trigger(engine, 11, "fired", None, ("suppressed", "consent 7: deny provision for purpose care-coordination / destination webhook"))
    add_trigger(engine, 12, "cancelled", "cancelled before its due time: appointment cancelled (event 9)")
    add_trigger(engine, 40, "skipped", "quiet hours push it to 2026-12-02T08:00:00-05:00, not before start (...)")
    add_trigger(engine, 41, "fired", None, ("suppressed", "opt-out (suppression 3, sms STOP; all destinations): STOP"))
    add_trigger(engine, 42, "fired", None, ("suppressed", "marketing requires a recorded authorization for this patient "
                                                          "(none active at send time)"))
    add_trigger(engine, 43, "fired", None, ("pending", None))  # in flight: neither delivered nor suppressed

    (whole,) = report.build(engine, "noshow-14d")
    assert whole.funnel.as_json() == {
        "eligible": 20, "held_out": 6, "triggered": 14, "delivered": 4,
        "suppressed": {"authorization": 1, "caps": 1, "cancelled": 1, "consent": 1, "deceased": 1, "opt-out": 1,
                       "quiet hours": 1},
        "achieved": {"treated": 9, "held_out": 2}}
    by_dest = {dict(r.breakdown)["destination"]: r for r in report.build(engine, "noshow-14d", by=["destination"])}
    assert set(by_dest) == {"webhook", "sms", "unknown"}
    assert (by_dest["sms"].treated.assigned, by_dest["sms"].held_out.assigned) == (5, 1)  # type: ignore[union-attr]
    assert by_dest["sms"].funnel.suppressed == {"authorization": 1, "opt-out": 1, "quiet hours": 1}
    assert by_dest["webhook"].funnel.suppressed == {"cancelled": 1, "caps": 1, "consent": 1}
    assert by_dest["unknown"].funnel.eligible == 2 and by_dest["unknown"].treated.pending == 2
    assert by_dest["unknown"].funnel.suppressed == {"deceased": 1}
    # each entry is in exactly one group, whatever the breakdown
    for dims in (["rule_version"], ["month"], ["week"], ["rule_version", "destination", "month", "week"]):
        groups = report.build(engine, "noshow-14d", by=dims)
        assert sum(g.funnel.eligible for g in groups) == 20
        assert sum(sum(g.funnel.suppressed.values()) for g in groups) == 7
    assert [dict(g.breakdown) for g in report.build(engine, "noshow-14d", by=["week,month"])][0] == {
        "month": "2026-11", "week": "2026-W47"}
    with pytest.raises(ValueError, match="unknown breakdown 'weekday'"):
        report.parse_by(["weekday"])

    assert main(["report", "noshow-14d", "--by", "rule_version", "--by", "month", "--format", "json",
                 "--database-url", db_url]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert [(i["breakdown"]["rule_version"], i["breakdown"]["month"], i["funnel"]["eligible"]) for i in items] == [
        ("v1", "2026-11", 12), ("v1", "unknown", 2), ("v2", "2026-12", 6)]
    assert set(items[0]["funnel"]) == {"eligible", "held_out", "triggered", "delivered", "suppressed", "achieved"}
    assert main(["report", "noshow-14d", "--by", "destination", "--database-url", db_url]) == 0
    text = capsys.readouterr().out
    assert "· destination sms" in text and "suppressed 3 (authorization 1, opt-out 1, quiet hours 1)" in text
    assert main(["report", "noshow-14d", "--by", "destination", "--format", "csv", "--database-url", db_url]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    sms = [r for r in rows if r["destination"] == "sms"]
    assert [(r["arm"], r["entries"], r["suppressed"]) for r in sms] == [("treated", "5", "3"), ("held_out", "1", "0")]
    assert sms[0]["suppressed_reasons"] == "authorization=1;opt-out=1;quiet hours=1"
    assert main(["report", "noshow-14d", "--by", "hour", "--database-url", db_url]) == 2
    assert "unknown breakdown 'hour'" in capsys.readouterr().err

    # a trigger back to pending (replayed) is no longer stopped; a replayed delivery that is
    # delivered takes its entry out of the suppressed count
    from sqlalchemy import update
    from sqlmodel import SQLModel

    t = SQLModel.metadata.tables
    with engine.begin() as c:
        c.execute(update(t["trigger"]).where(t["trigger"].c.id == 10).values(status="pending", reason=None))
    with unit(engine, write=True) as u:
        u.run(q.MARK_DELIVERED.name, trigger_id=11, now=5.0)
    (whole,) = report.build(engine, "noshow-14d")
    assert whole.funnel.suppressed == {"authorization": 1, "cancelled": 1, "deceased": 1, "opt-out": 1, "quiet hours": 1}
    assert whole.funnel.delivered == 5


def test_stop_categories_backfill_as_the_triggers_keep_them(engine: Any) -> None:
    """Revision 0010's backfill gives entries opened before the triggers existed the categories
    the triggers give new ones; the SQL CASE and the Python table agree."""
    from sqlalchemy import text

    from middleware.storage import outcome_stops

    seed(engine, "treated", "missed", 4, 0)
    add_trigger(engine, 0, "suppressed", "cap reached: 2 reminders to this patient today (limit 2)")
    add_trigger(engine, 1, "cancelled", "journey exit 'rebooked' (event 5)")
    add_trigger(engine, 2, "cancelled", None)
    add_trigger(engine, 3, "fired", None, ("suppressed", "destination crm has no business associate agreement; ..."))
    want = {"caps": 1, "journey exit": 1, "cancelled": 1, "destination policy": 1}
    assert report.build(engine, "noshow-14d")[0].funnel.suppressed == want
    assert [outcome_stops.category(r, s) for r, s in (("cap reached: 1", "suppressed"), ("journey exit 'x'", "cancelled"),
                                                       (None, "cancelled"), ("nothing known", "skipped"))] == [
        "caps", "journey exit", "cancelled", "other"]
    with engine.begin() as c:
        c.execute(text("UPDATE outcome SET stopped = NULL"))
    assert report.build(engine, "noshow-14d")[0].funnel.suppressed == {}
    with engine.begin() as c:
        for stmt in outcome_stops.backfill_statements():
            c.execute(text(stmt))
    assert report.build(engine, "noshow-14d")[0].funnel.suppressed == want
