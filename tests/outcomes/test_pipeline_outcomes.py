"""Outcomes through the real pipeline (HL7 in, Processor, database; SQLite or PostgreSQL):
a rule with a goal and a 50% holdout under an approved study. Every eligible patient gets one
journey entry; held-out patients get no trigger; the report's counts equal the ground truth."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from middleware.outcomes import report
from middleware.outcomes.track import close_windows
from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.storage.db import init_db, make_engine
from middleware.storage.inbox import InboundRecord, InboxWriter
from tests.support.hl7msgs import siu

RULE = """\
rules:
  - id: noshow-winback
    on: [appointment.noshow]
    purpose: care-coordination
    on_no_longer_matching: keep
    emit: {trigger: noshow_winback, destinations: [webhook]}
    goal:
      id: noshow-rebooked-14d
      aligned_with: common practice (14 days)
      on: [appointment.booked]
      counted_at: recorded
      anchor: start
      window: {from: 0, to: 14}
    holdout:
      share: 0.5
      experiment: noshow-winback-test
      study: {approval: QI-2026-042, approver: Quality committee, expires: "2099-12-31"}
"""
N = 40


def feed(engine: Any, rs: Any, *msgs: bytes) -> None:
    """Store HL7 messages in the inbox as the MLLP listener does, and process them all."""
    InboxWriter(engine).write_batch([InboundRecord(source="default", channel="mllp", raw=m, status="received",
                                                   sha256=hashlib.sha256(m).hexdigest()) for m in msgs])
    Processor(engine, lambda: rs).drain()


def rows(engine: Any, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql))]


@pytest.fixture
def setup(db_url: str, mappings_dir: Path) -> tuple[Any, Any]:
    for f in (mappings_dir / "rules").glob("*.yaml"):
        f.unlink()
    (mappings_dir / "rules" / "winback.yaml").write_text(RULE)
    rs, diags = load_ruleset(mappings_dir)
    assert rs is not None, [str(d) for d in diags]
    engine = make_engine(db_url)
    init_db(engine)
    return engine, rs


def test_entries_arms_and_outcomes_match_the_ground_truth(setup: tuple[Any, Any]) -> None:
    engine, rs = setup
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=40)
    msgs, rebooked = [], set()
    for i in range(N):
        mrn, start = f"MRN7{i:05d}", t0 + timedelta(days=1)
        msgs.append(siu("S12", control=f"B{i}", mrn=mrn, appt=f"A{i}", start=start, sent=t0))
        msgs.append(siu("S26", control=f"N{i}", mrn=mrn, appt=f"A{i}", start=start, status="Noshow",
                        sent=start + timedelta(hours=2)))
        if i % 3 == 0:  # rebooked 4 days after the missed visit (a visit two weeks later still counts)
            rebooked.add(mrn)
            msgs.append(siu("S12", control=f"R{i}", mrn=mrn, appt=f"C{i}", start=start + timedelta(days=20),
                            sent=start + timedelta(days=4)))
        elif i % 3 == 1:  # rebooked too late: day 20
            msgs.append(siu("S12", control=f"L{i}", mrn=mrn, appt=f"D{i}", start=start + timedelta(days=30),
                            sent=start + timedelta(days=20)))
    feed(engine, rs, *msgs)
    assert rows(engine, "SELECT count(*) FROM inbound_message WHERE status <> 'processed'") == [(0,)]
    while close_windows(engine, rs, datetime.now(timezone.utc)):
        pass
    entries = rows(engine, "SELECT arm, status, trigger_id, patient_id FROM outcome ORDER BY id")
    assert len(entries) == N  # one entry per patient's no-show, whatever the arm
    held = [e for e in entries if e[0] == "held_out"]
    treated = [e for e in entries if e[0] == "treated"]
    assert held and treated and len(held) + len(treated) == N
    assert all(e[2] is None for e in held) and all(e[2] is not None for e in treated)
    assert rows(engine, "SELECT count(*) FROM \"trigger\" WHERE rule_id = 'noshow-winback'") == [(len(treated),)]
    assert all(e[3] and e[3].startswith("pt_") for e in entries)  # arms are keyed by the internal patient id
    assert {e[1] for e in entries} == {"achieved", "missed"}
    assert sum(e[1] == "achieved" for e in entries) == len(rebooked)
    # the arms are persisted: reprocessing the same events changes nothing
    (r,) = report.build(engine, "noshow-rebooked-14d")
    assert r.treated.assigned + r.held_out.assigned == N  # type: ignore[union-attr]
    assert r.treated.achieved + r.held_out.achieved == len(rebooked)  # type: ignore[union-attr]
    assigned = rows(engine, "SELECT patient_id, arm FROM holdout_assignment ORDER BY patient_id")
    assert len(assigned) == N
    # the funnel: every entry eligible, the held-out ones never triggered; nothing delivered yet (no worker ran)
    assert r.funnel.as_json() == {"eligible": N, "held_out": len(held), "triggered": len(treated), "delivered": 0,
                                  "suppressed": {}, "achieved": {"treated": r.treated.achieved,
                                                                 "held_out": r.held_out.achieved}}  # type: ignore[union-attr]
    # breakdowns recorded at entry: the rule's destination (held-out entries too), the rule-set
    # version, and the anchor's (the missed visit's) local month and ISO week
    local = (t0 + timedelta(days=1)).astimezone(ZoneInfo(rs.settings.site_timezone))
    iso = local.isocalendar()
    (g,) = report.build(engine, "noshow-rebooked-14d", by=["rule_version", "destination", "month", "week"])
    assert dict(g.breakdown) == {"rule_version": rs.version, "destination": "webhook",
                                 "month": f"{local.year}-{local.month:02d}", "week": f"{iso[0]}-W{iso[1]:02d}"}
    assert g.funnel == r.funnel


def test_holdout_refused_for_care_coordination_without_a_study(mappings_dir: Path) -> None:
    for f in (mappings_dir / "rules").glob("*.yaml"):
        f.unlink()
    (mappings_dir / "rules" / "winback.yaml").write_text(RULE.replace(
        '      study: {approval: QI-2026-042, approver: Quality committee, expires: "2099-12-31"}\n', ""))
    rs, diags = load_ruleset(mappings_dir)
    assert rs is None
    assert any(d.code == "holdout-refused" and d.path.endswith("winback.yaml") for d in diags)
    (mappings_dir / "rules" / "winback.yaml").write_text(RULE.replace('"2099-12-31"', '"2020-01-31"'))
    rs, diags = load_ruleset(mappings_dir)
    assert rs is None and any(d.code == "study-expired" for d in diags)


def test_explain_shows_the_goal_and_its_window(capsys: pytest.CaptureFixture[str]) -> None:
    from middleware.cli import main
    from tests.conftest import REPO

    assert main(["explain", str(REPO / "tests/fixtures/hl7/siu_s26_v251.hl7"), "--now", "2024-01-01T00:00",
                 "--mappings", str(REPO / "mappings")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("goal "))
    assert "noshow-rebooked-14d" in line and "0-14" in line
    assert "window 2024-04-02T00:00:00-04:00 to 2024-04-17T00:00:00-04:00" in line  # local dates, site zone


JOURNEY = """\
journeys:
  - id: winback-journey
    purpose: marketing
    entry: {on: [appointment.noshow]}
    exit:
      - {name: rebooked, on: [appointment.booked], same: patient}
    steps:
      - id: first
        when: {after: 1h}
        emit: {trigger: winback_first, destinations: [webhook]}
      - id: second
        when: {after: 3d}
        emit: {trigger: winback_second, destinations: [webhook]}
    goal:
      id: winback-rebooked-14d
      on: [appointment.booked]
      counted_at: recorded
      anchor: start
      window: {from: 0, to: 14}
    holdout: {share: 0.5, experiment: winback-journey-test}
"""


def test_a_journey_entry_is_one_entry_and_one_arm_for_all_its_steps(db_url: str, mappings_dir: Path) -> None:
    for f in (mappings_dir / "rules").glob("*.yaml"):
        f.unlink()
    (mappings_dir / "rules" / "winback.yaml").write_text(JOURNEY)
    rs, diags = load_ruleset(mappings_dir)
    assert rs is not None, [str(x) for x in diags if x.level == "error"]
    engine = make_engine(db_url)
    init_db(engine)
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=30)
    msgs = []
    for i in range(12):
        start = t0 + timedelta(days=1)
        msgs.append(siu("S12", control=f"JB{i}", mrn=f"MRN8{i:05d}", appt=f"J{i}", start=start, sent=t0))
        msgs.append(siu("S26", control=f"JN{i}", mrn=f"MRN8{i:05d}", appt=f"J{i}", start=start, status="Noshow",
                        sent=start + timedelta(hours=2)))
    feed(engine, rs, *msgs)
    entries = rows(engine, "SELECT arm, trigger_id, journey_id FROM outcome ORDER BY id")
    assert len(entries) == 12 and {e[2] for e in entries} == {"winback-journey"}  # one per entry, not per step
    triggers = rows(engine, "SELECT patient_id, rule_id FROM \"trigger\" ORDER BY id")
    held = {e for e in rows(engine, "SELECT patient_id FROM holdout_assignment WHERE arm = 'held_out'")}
    # a held-out patient gets no step at all; a treated one gets both steps
    assert all((pid,) not in held for pid, _ in triggers)
    per_patient: dict[str, set[str]] = {}
    for pid, rule_id in triggers:
        per_patient.setdefault(pid, set()).add(rule_id)
    assert all(v == {"winback-journey.first", "winback-journey.second"} for v in per_patient.values())
    assert len(per_patient) + len(held) == 12
    assert rows(engine, "SELECT DISTINCT experiment FROM holdout_assignment") == [("winback-journey-test",)]
    # the steps were due 30 days ago: skipped at evaluation ("due time ... has already passed"),
    # before the entry was opened; the entry takes that reason (database trigger on its INSERT)
    funnel = report.build(engine, "winback-rebooked-14d")[0].funnel
    assert (funnel.eligible, funnel.held_out, funnel.triggered, funnel.delivered) == (12, len(held), len(per_patient), 0)
    assert funnel.suppressed == {"time passed": len(per_patient)}


def test_reprocessing_never_doubles_entries_nor_moves_arms(setup: tuple[Any, Any]) -> None:
    """Replaying every stored event through the rules (``careloop reprocess --apply``) opens no
    second entry for a journey entry and moves no patient between arms."""
    from middleware.pipeline.replay import reprocess

    engine, rs = setup
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=40)
    msgs = []
    for i in range(10):
        start = t0 + timedelta(days=1)
        msgs.append(siu("S12", control=f"RB{i}", mrn=f"MRN9{i:05d}", appt=f"R{i}", start=start, sent=t0))
        msgs.append(siu("S26", control=f"RN{i}", mrn=f"MRN9{i:05d}", appt=f"R{i}", start=start, status="Noshow",
                        sent=start + timedelta(hours=2)))
    feed(engine, rs, *msgs)
    before = rows(engine, "SELECT entry_key, arm FROM outcome ORDER BY entry_key")
    arms = rows(engine, "SELECT patient_id, arm FROM holdout_assignment ORDER BY patient_id")
    assert len(before) == 10
    reprocess(engine, rs, now=datetime.now(timezone.utc), apply=True)
    assert rows(engine, "SELECT entry_key, arm FROM outcome ORDER BY entry_key") == before
    assert rows(engine, "SELECT patient_id, arm FROM holdout_assignment ORDER BY patient_id") == arms


def test_arms_follow_a_merge_to_the_surviving_patient(setup: tuple[Any, Any]) -> None:
    """Two patients, then ADT^A40 merges the first into the second: a later no-show under the
    retired MRN is an entry of the surviving patient, in the survivor's persisted arm; the
    assignments made before the merge are kept as they were."""
    from tests.support.hl7msgs import adt

    engine, rs = setup
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=40)

    def noshow(mrn: str, appt: str, day: int) -> list[bytes]:
        start = t0 + timedelta(days=day)
        return [siu("S12", control=f"B-{appt}", mrn=mrn, appt=appt, start=start, sent=start - timedelta(days=1)),
                siu("S26", control=f"N-{appt}", mrn=mrn, appt=appt, start=start, status="Noshow",
                    sent=start + timedelta(hours=2))]

    feed(engine, rs, *noshow("MRN600001", "M1", 1), *noshow("MRN600002", "M2", 1))
    before = rows(engine, "SELECT patient_id, arm FROM holdout_assignment ORDER BY patient_id")
    assert len(before) == 2
    (survivor_id, survivor_arm), = rows(engine, "SELECT patient_id, arm FROM outcome WHERE patient_key LIKE '%MRN600002%'")
    feed(engine, rs, adt("A40", control="MERGE-1", mrn="MRN600002", prior_mrn="MRN600001", sent=t0 + timedelta(days=2)))
    feed(engine, rs, *noshow("MRN600001", "M3", 5))  # a late message under the retired MRN
    assert len(rows(engine, "SELECT id FROM outcome")) == 3
    (pid, arm), = rows(engine, "SELECT patient_id, arm FROM outcome WHERE id = (SELECT max(id) FROM outcome)")
    assert pid == survivor_id and arm == survivor_arm
    assert rows(engine, "SELECT patient_id, arm FROM holdout_assignment ORDER BY patient_id") == before
