"""Reload policy for pending triggers of changed rules (keep / reevaluate / cancel),
refusal of an invalid set, and `careloop reprocess` never doubling a trigger."""
from __future__ import annotations

import hashlib
import shutil
from datetime import datetime, timezone
from pathlib import Path

from sqlmodel import Session, select

from middleware.pipeline.process import Processor
from middleware.pipeline.replay import apply_rule_changes, reprocess
from middleware.rules.load import load_ruleset
from middleware.storage.db import init_db, make_engine
from middleware.storage.tables import InboundMessage, TriggerRow

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 3, 1, 14, tzinfo=timezone.utc)


def setup(tmp_path: Path, db_url: str):
    m = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", m)
    rs, _ = load_ruleset(m)
    engine = make_engine(db_url, synchronous="OFF")
    init_db(engine)
    raw = (REPO / "tests/fixtures/hl7/siu_s12_v23.hl7").read_bytes()
    with Session(engine) as s:
        s.add(InboundMessage(source="default", channel="mllp", received_at=NOW.timestamp(), raw=raw,
                             sha256=hashlib.sha256(raw).hexdigest(), status="received"))
        s.commit()
    Processor(engine, lambda: rs, clock=lambda: NOW).drain()
    return m, rs, engine


def triggers(engine) -> dict[str, TriggerRow]:
    with Session(engine) as s:
        return {t.rule_id: t for t in s.exec(select(TriggerRow))}


def edit(m: Path, old: str, new: str) -> None:
    p = m / "rules" / "appointments.yaml"
    p.write_text(p.read_text().replace(old, new, 1))


def test_reevaluate_moves_pending_triggers_of_a_changed_rule(tmp_path, db_url):
    m, old, engine = setup(tmp_path, db_url)
    before = triggers(engine)["appointment-reminder-72h"].due_at
    edit(m, "offset: -3d", "offset: -2d")
    new, _ = load_ruleset(m)
    assert new is not None and new.version != old.version
    assert apply_rule_changes(engine, old, new, NOW) == {"appointment-reminder-72h": 1}
    t = triggers(engine)["appointment-reminder-72h"]
    assert t.status == "pending" and t.due_at == before + 86400 and t.ruleset_version == new.version
    assert "on_rule_change: reevaluate" in (t.reason or "")


def test_cancel_policy_and_removed_rules(tmp_path, db_url):
    m, old, engine = setup(tmp_path, db_url)
    edit(m, "on_rule_change: reevaluate\n", "on_rule_change: cancel\n")  # the 72h rule changes, policy cancel
    new, _ = load_ruleset(m)
    apply_rule_changes(engine, old, new, NOW)
    ts = triggers(engine)
    assert ts["appointment-reminder-72h"].status == "cancelled"
    assert ts["appointment-reminder-24h"].status == "pending"  # unchanged rule: kept


def test_reload_refuses_an_invalid_set_and_keeps_running(tmp_path, db_url):
    from middleware.service import Runtime
    from middleware.settings import get_settings

    m, rs, engine = setup(tmp_path, db_url)
    rt = Runtime(get_settings(mappings_dir=m, database_url=db_url))
    running = rt.ruleset().version
    edit(m, "appointment.booked", "appointment.bookd")
    errors = rt.reload()
    assert errors and "unknown event type 'appointment.bookd'" in str(errors[0]) and "appointments.yaml:" in str(errors[0])
    assert rt.ruleset().version == running


def test_reprocess_never_doubles_and_fills_gaps_after_a_fix(tmp_path, db_url):
    m, rs, engine = setup(tmp_path, db_url)
    assert len(triggers(engine)) == 2
    rep = reprocess(engine, rs, now=NOW)
    assert rep.events == 1 and rep.triggers == 0  # origin_key: nothing doubled
    # a "mapping fix": a new rule that would have fired for the stored event
    p = m / "rules" / "appointments.yaml"
    text = p.read_text().replace("  - id: noshow-reengagement", """  - id: appointment-booked-welcome
    on: [appointment.booked]
    purpose: care-coordination
    on_no_longer_matching: cancel
    channel: email
    emit: {trigger: appointment_welcome, destinations: [webhook]}

  - id: noshow-reengagement""")
    p.write_text(text)
    fixed, diags = load_ruleset(m)
    assert fixed is not None, [str(d) for d in diags]
    rep = reprocess(engine, fixed, now=NOW, rules={"appointment-booked-welcome"})
    assert rep.triggers == 1 and "appointment-booked-welcome" in triggers(engine)
    assert reprocess(engine, fixed, now=NOW).triggers == 0
