"""The dry run's privacy records (golden steps ``authorization``, ``opt_out``, ``consent``, ``revoke``)
land in the scratch database as the privacy API would store them, and a revoke takes the
patient's most recent active one."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from middleware.pipeline.dryrun import DryRun
from middleware.rules.load import load_ruleset
from middleware.storage.queries import privacy as pq
from middleware.storage.sql import unit

REPO = Path(__file__).resolve().parents[2]
PK = "HOSPA|MR|123"


def test_records_and_revokes_the_latest_active_one() -> None:
    rs, diags = load_ruleset(REPO / "mappings")
    assert rs is not None, [str(d) for d in diags]
    t0 = datetime(2025, 7, 1, 13, tzinfo=timezone.utc)
    dry = DryRun(rs, t0)
    try:
        for kind in ("authorization", "opt_out", "consent"):
            with pytest.raises(ValueError, match=f"no active {kind}"):
                dry.record("revoke", PK, {"what": kind})
        assert dry.record("authorization", PK, {"purpose": "marketing"}) == "authorization for marketing recorded"
        dry.record("authorization", PK, {"purpose": "marketing", "reference": "form-2"})
        dry.record("opt_out", PK, {"destination": "sms"})
        dry.record("opt_out", PK, {"reason": "asked twice"})
        assert dry.record("consent", PK, {"id": "c-1", "status": "active"}) == "consent c-1 recorded"
        dry.record("consent", PK, {"id": "c-2", "status": "active"})
        dry.advance(timedelta(hours=1))
        t1 = dry.now.timestamp()
        for kind in ("authorization", "opt_out", "consent"):
            assert dry.record("revoke", PK, {"what": kind}) == f"{kind} revoked"
        with unit(dry.engine) as u:
            auths = pq.authorizations_of(u, PK)
            assert [(a.reference, a.revoked_at) for a in auths] == [(None, None), ("form-2", t1)]
            opts = pq.suppressions(u, patient_key=PK, active=False, limit=10)
            assert [(o.destination, o.reason, o.source, o.revoked_at) for o in opts] == [
                (None, "asked twice", "operator", t1), ("sms", "opt-out", "operator", None)]
            cons = pq.consents_of(u, PK)
            assert [(c.fhir_id, c.status, c.source) for c in cons] == [("c-1", "active", "golden"),
                                                                       ("c-2", "inactive", "golden")]
        with pytest.raises(ValueError, match="not authorization, opt_out or consent"):
            dry.record("revoke", PK, {"what": "everything"})
    finally:
        dry.close()
