"""The ``outcomes`` sandbox scenario against a real HAPI: synthetic no-shows and rebookings
written as transaction bundles, HAPI's rest-hook notifications into a real careloop (SQLite:
the HAPI tests run in the SQLite pass) with the sandbox rule (a goal and a 50% holdout under a study), and the outcome report's
counts per arm equal to the ground truth the scenario computed (middleware/sandbox/outcomes_scenario.py)."""
from __future__ import annotations

import uuid
from typing import Any

import pytest

from middleware.sandbox import hooks, outcomes_scenario, scenarios
from middleware.sandbox.local import CareloopApi, LocalCareloop

pytestmark = [pytest.mark.hapi, pytest.mark.timeout(900)]
N = 40


def test_outcomes_report_equals_the_ground_truth(hapi_base_url: str, hapi_client: Any, tmp_path: Any,
                                                 callback_hosts: tuple[str, str], db_url: str) -> None:
    if callback_hosts[0] != "127.0.0.1":
        pytest.skip("careloop runs on loopback; a HAPI container cannot reach it (use the Java runtime)")
    tag = scenarios.new_tag()
    cl = LocalCareloop.start(fhir_base=hapi_base_url, workdir=tmp_path / "careloop", token="e2e-token",
                             database_url=db_url,
                             extra_rules=outcomes_scenario.extra_rules(tag))
    api = CareloopApi(cl.url)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    sub_ids: list[str] = []
    try:
        sub_ids = scenarios.prepare(hapi_client, api, cl.url + "/fhir/default", cl.token, prefix=prefix)
        out = outcomes_scenario.run(hapi_base_url, api, tag, n=N, seed=14, close_windows=cl.close_windows)
        truth = out.truth()
        assert [(r.windows, r.arm, r.what, r.truth, r.report) for r in out.rows if not r.ok] == []
        assert {r.windows for r in out.rows} == {"open", "closed"} and len(out.rows) == 16
        settled = out.truth(windows_closed=True)
        assert settled["treated"]["missed"] + settled["held_out"]["missed"] == N - len(out.rebooked)
        # both arms are populated, every patient has exactly one entry, and the effect is built in
        assert truth["treated"]["entries"] > 0 and truth["held_out"]["entries"] > 0
        assert truth["treated"]["entries"] + truth["held_out"]["entries"] == N
        assert 0 < len(out.rebooked) < N
        item = out.report["items"][0]  # type: ignore[index]
        assert item["goal"] == outcomes_scenario.goal_id(tag) and item["experiment"] == outcomes_scenario.experiment(tag)
        # held-out patients got no trigger; each treated patient got exactly one, delivered to the sink
        fired = [t for t in api.all_pages("triggers", 0, rule_id=outcomes_scenario.RULE_ID)]
        assert len(fired) == truth["treated"]["entries"]
        assert len({t["patient_key"] for t in fired}) == len(fired)
        # the same seed and the same arms give the same rebookings (the truth is reproducible)
        again = outcomes_scenario.rebookings(out.cohort, out.arms)
        assert again == out.rebooked
    finally:
        hooks.delete(hapi_client, sub_ids)
        cl.stop()
