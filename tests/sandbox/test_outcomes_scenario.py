"""The outcomes scenario's pure parts: the sandbox rule loads with the demo mappings (goal,
50% holdout, study), the cohort is synthetic and unique per run, and the ground truth is
reproducible from the seed with the built-in effect in the treated arm."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from middleware.rules.load import load_ruleset
from middleware.sandbox import demo_mappings, outcomes_scenario as osc
from middleware.sandbox.hapi import repo_root

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)


def test_the_sandbox_rule_loads_into_the_demo_copy_only(tmp_path: Path) -> None:
    dst = tmp_path / "mappings"
    demo_mappings.prepare(repo_root() / "mappings", dst, sink_url="http://127.0.0.1:1/hooks",
                          fhir_base="http://127.0.0.1:2/fhir", extra_rules=osc.extra_rules("abc12345"))
    rs, diags = load_ruleset(dst)
    assert rs is not None, [str(d) for d in diags if d.level == "error"]
    rule = next(r for r in rs.rules if r.id == osc.RULE_ID)
    assert rule.rule.goal is not None and rule.rule.goal.id == osc.goal_id("abc12345")
    assert rule.rule.where == "id.startsWith('sbx-out-abc12345-')"
    assert rule.rule.holdout is not None and rule.rule.holdout.share == 0.5
    assert not (repo_root() / "mappings" / "rules" / osc.RULE_FILE).exists()
    plain = tmp_path / "plain"
    demo_mappings.prepare(repo_root() / "mappings", plain, sink_url=None, fhir_base=None)
    assert not (plain / "rules" / osc.RULE_FILE).exists()


def test_cohort_is_synthetic_and_unique() -> None:
    c = osc.cohort(30, 14, "abc", NOW)
    assert len({p["id"] for p in c.patients}) == 30
    assert len({p["identifier"][0]["value"] for p in c.patients}) == 30
    assert all(p["name"][0]["family"] == "Testpatient" for p in c.patients)
    assert all(v["status"] == "booked" and v["participant"][0]["actor"]["reference"] == f"Patient/{p['id']}"
               for v, p in zip(c.visits, c.patients))


def test_rebookings_follow_the_seed_and_the_arm() -> None:
    c = osc.cohort(400, 14, "abc", NOW)
    arms = {i: ("treated" if i % 2 else "held_out") for i in range(400)}
    got = osc.rebookings(c, arms)
    assert got == osc.rebookings(osc.cohort(400, 14, "other", NOW), arms)  # seed, not tag
    assert got != osc.rebookings(osc.cohort(400, 15, "abc", NOW), arms)
    treated = sum(arms[i] == "treated" for i in got) / 200
    held = sum(arms[i] == "held_out" for i in got) / 200
    assert 0.5 < treated < 0.7 and 0.2 < held < 0.4  # P_REBOOK 0.6 vs 0.3
    # one draw per patient: a patient's fate depends on its arm only, not on the others' arms
    flipped = {**arms, 0: "treated"}
    assert set(osc.rebookings(c, flipped)) - {0} == set(got) - {0}


def test_truth_counts_per_arm() -> None:
    run = osc.OutcomesRun(osc.cohort(4, 1, "t", NOW), arms={0: "treated", 1: "treated", 2: "held_out", 3: "held_out"},
                          rebooked=[1, 2])
    assert run.truth() == {"treated": {"entries": 2, "achieved": 1, "missed": 0, "pending": 1},
                           "held_out": {"entries": 2, "achieved": 1, "missed": 0, "pending": 1}}


def test_compare_flags_every_difference() -> None:
    run = osc.OutcomesRun(osc.cohort(4, 1, "t", NOW), arms={0: "treated", 1: "treated", 2: "held_out", 3: "held_out"},
                          rebooked=[1, 2])
    good = {"items": [{"treated": {"entries": 2, "achieved": 1, "missed": 0, "pending": 1},
                       "held_out": {"entries": 2, "achieved": 1, "missed": 0, "pending": 1}}]}
    assert all(r.ok for r in run.compare(good)) and len(run.compare(good)) == 8
    bad = {"items": [{"treated": {"entries": 2, "achieved": 2, "missed": 0, "pending": 0},
                      "held_out": {"entries": 2, "achieved": 1, "missed": 0, "pending": 1}}]}
    assert [(r.arm, r.what, r.truth, r.report) for r in run.compare(bad) if not r.ok] == [
        ("treated", "achieved", 1, 2), ("treated", "pending", 1, 0)]
    closed = run.compare(good, windows_closed=True)  # still pending once the windows closed: a difference
    assert {(r.arm, r.what) for r in closed if not r.ok} == {("treated", "missed"), ("treated", "pending"),
                                                           ("held_out", "missed"), ("held_out", "pending")}
    assert not any(r.ok for r in run.compare(None))  # no report at all: every row fails
    assert not osc.OutcomesRun(run.cohort).ok  # nothing compared is not a pass
