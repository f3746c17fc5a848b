"""Journeys, exclusivity and re-checks on both databases (the SQL the pipeline runs for them)."""
from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from middleware.pipeline.dryrun import DryRun
from middleware.rules.load import RuleSet, load_ruleset
from middleware.storage.schema import open_database

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 5, 1, 13, tzinfo=timezone.utc)

OFFER = """\
rules:
  - id: mammo-offer
    on: [appointment.booked]
    where: serviceType.memberOf('mammography')
    when: {after: 2d}
    purpose: marketing
    channel: email
    emit: {trigger: mammo_offer, destinations: [webhook]}
"""


class DbRun(DryRun):
    """The dry run's pipeline and scheduler on another database."""

    def __init__(self, rs: RuleSet, now: datetime, url: str) -> None:
        super().__init__(rs, now)
        self.engine.dispose()
        self.engine = open_database(url, self_upgrade=True)


def appt(aid: str, status: str, version: str, at: str, code: str = "77067", start: str = "2025-05-20T09:30:00-04:00") -> bytes:
    return orjson.dumps({"resourceType": "Appointment", "id": aid, "status": status, "start": start,
                         "meta": {"versionId": version, "lastUpdated": at},
                         "serviceType": [{"coding": [{"code": code, "display": "Screening mammography"}]}],
                         "participant": [{"actor": {"reference": "Patient/p1"}}]})


@pytest.fixture
def rs(tmp_path: Path) -> RuleSet:
    m = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", m, ignore=shutil.ignore_patterns("*_test.yaml"))
    (m / "rules" / "zz.yaml").write_text(OFFER)
    got, diags = load_ruleset(m)
    assert got is not None, [str(d) for d in diags]
    return got


def by_rule(run: DryRun) -> dict[str, list[tuple[str, str, Any]]]:
    out: dict[str, list[tuple[str, str, Any]]] = {}
    for t in run.triggers():
        out.setdefault(t.rule_id, []).append((t.status, t.reason or "", t.flag))
    return out


def test_journey_exit_dedup_exclusive_and_recheck(db_url: str, rs: RuleSet) -> None:
    run = DbRun(rs, T0, db_url)
    try:
        run.feed(appt("m1", "booked", "1", "2025-05-01T09:00:00-04:00"), "book")
        run.advance(timedelta(days=4))
        run.feed(appt("m1", "cancelled", "2", "2025-05-05T09:00:00-04:00"), "cancel")
        got = by_rule(run)
        assert got["cancelled-not-rebooked-48h"] == [("skipped", "superseded by mammography-recall (overlap.exclusive_with)", None)]
        assert [s for s, _, _ in got["mammography-recall.first-recall"]] == ["pending"]
        run.fire_until(T0 + timedelta(days=12))  # the first recall fires
        run.feed(appt("m2", "booked", "1", "2025-05-13T09:00:00-04:00", start="2025-06-10T09:30:00-04:00"), "rebook")
        got = by_rule(run)
        assert got["mammography-recall.first-recall"][0][0] == "fired"
        (status, reason, _), = got["mammography-recall.second-recall"]
        assert status == "cancelled" and "journey mammography-recall exit 'rebooked'" in reason
        # the second booking's marketing offer is pending; a change without the service is partial: flagged
        run.feed(orjson.dumps({"resourceType": "Appointment", "id": "m2", "status": "booked",
                               "start": "2025-06-10T09:30:00-04:00", "meta": {"versionId": "2",
                               "lastUpdated": "2025-05-13T10:00:00-04:00"},
                               "participant": [{"actor": {"reference": "Patient/p1"}}]}), "partial")
        first_offer, (status, _, flag) = by_rule(run)["mammo-offer"]
        assert first_offer[0] == "suppressed"  # m1's offer: no authorization then
        assert status == "pending" and flag and "incomplete data" in flag
        run.record("authorization", run.triggers()[0].patient_key or "", {"purpose": "marketing"})
        run.fire_until(run.now + timedelta(days=3))
        status, reason, _ = by_rule(run)["mammo-offer"][1]
        assert status == "suppressed" and reason.startswith("not sent on data that could not be re-checked")
        # the same appointment cancelled within 90 days of the first entry: the journey is not entered again
        run.feed(appt("m2", "cancelled", "3", "2025-05-17T09:00:00-04:00", start="2025-06-10T09:30:00-04:00"), "cancel2")
        second = by_rule(run)["mammography-recall.first-recall"][1]
        assert second[0] == "skipped" and second[1].startswith("duplicate of trigger")
        # a reschedule to another service cancels the pending offer (where false on complete data)
        run.feed(appt("m3", "booked", "1", "2025-05-17T10:00:00-04:00", start="2025-06-12T09:30:00-04:00"), "book3")
        run.feed(appt("m3", "booked", "2", "2025-05-17T11:00:00-04:00", code="99213", start="2025-06-13T09:30:00-04:00"),
                 "moved")
        status, reason, _ = by_rule(run)["mammo-offer"][2]
        assert status == "cancelled" and "no longer matches after appointment.rescheduled" in reason
    finally:
        run.close()
