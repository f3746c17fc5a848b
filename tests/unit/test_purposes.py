"""The purpose taxonomy is defined once (middleware/purposes.py) and every stage reads it."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

from middleware import purposes
from middleware.config.destinations import Policy
from middleware.rules import spec
from middleware.storage.privacy import PURPOSE_CODES, consent_denies

REPO = Path(__file__).resolve().parents[2]


def test_one_list_of_purposes_everywhere() -> None:
    assert spec.Purpose is purposes.Purpose
    assert set(get_args(purposes.Purpose)) == set(purposes.PURPOSES) == set(purposes.ALL)
    assert Policy().purposes == list(purposes.ALL)
    assert PURPOSE_CODES == {p.name: p.consent_codes for p in purposes.PURPOSES.values()}


def test_what_each_purpose_implies() -> None:
    t = {row["purpose"]: row for row in purposes.table()}
    for clinical in ("treatment-reminder", "care-coordination"):
        assert t[clinical]["clinically_required"] and not t[clinical]["drop_on_missing_data"]
        assert not t[clinical]["may_hold_out"] and not t[clinical]["needs_authorization"]
    assert t["marketing"]["needs_authorization"] and t["marketing"]["may_hold_out"] and t["marketing"]["drop_on_missing_data"]
    assert purposes.fcc_healthcare_exemption("treatment-reminder") and not purposes.fcc_healthcare_exemption("marketing")
    # an exit never carries a reason (issue 17)
    assert all("reason" not in row["exit_fields"] for row in t.values())


def test_unknown_purposes_fail_closed() -> None:
    assert purposes.needs_authorization("advertising") and purposes.drop_on_missing_data(None)
    assert not purposes.clinically_required("advertising") and not purposes.may_hold_out("advertising")
    assert purposes.consent_codes("advertising") == frozenset({"advertising"})


def test_consent_purpose_codes_come_from_the_taxonomy() -> None:
    deny = [{"resourceType": "Consent", "id": "c", "status": "active",
             "provision": {"type": "deny", "purpose": [{"code": "HMARKT"}]}}]
    from datetime import datetime, timezone
    at = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert consent_denies(deny, purpose="marketing", destination="webhook", at=at)
    assert consent_denies(deny, purpose="care-coordination", destination="webhook", at=at) is None


def test_the_module_is_a_leaf() -> None:
    tree = ast.parse((REPO / "middleware" / "purposes.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("middleware"), ast.dump(node)
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("middleware") for a in node.names)


def test_no_stage_compares_purpose_names_any_more() -> None:
    for path in ("middleware/scheduler/runner.py", "middleware/delivery/gate.py", "middleware/rules/load.py"):
        text = (REPO / path).read_text()
        assert '== "marketing"' not in text and '== "treatment-reminder"' not in text, path
