"""The scheduler's fire-time checks are read once per claimed batch (one query per check for all
its patients) and decided per trigger: the verdicts are those of checking each trigger on its
own, including caps that count the triggers fired earlier in the same batch."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest
from sqlmodel import Session, select

from middleware.rules.load import RuleSet, load_ruleset
from middleware.rules.spec import Caps
from middleware.scheduler.runner import Scheduler
from middleware.storage.db import init_db, make_engine
from middleware.storage.tables import (
    Authorization, DeliveryRow, PatientRow, ResourceState, Suppression, TriggerRow,
)

from support.statements import recording

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 6, 1, 16, tzinfo=timezone.utc)
T = NOW.timestamp()


@pytest.fixture
def engine(db_url):  # noqa: ANN001
    eng = make_engine(db_url, synchronous="OFF")
    init_db(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def bundled() -> RuleSet:
    rs, _ = load_ruleset(REPO / "mappings")
    return rs


def with_caps(rs: RuleSet, caps: Caps | None = None, treatment: Caps | None = None) -> RuleSet:
    update = {k: v for k, v in (("caps", caps), ("treatment_caps", treatment)) if v is not None}
    return dataclasses.replace(rs, settings=rs.settings.model_copy(update=update))


def trig(i: int, pk: str | None, *, rule: str = "noshow-reengagement", purpose: str = "care-coordination",
         kind: str | None = "rebooking-outreach", dests: str = "webhook", due: float = T - 600, status: str = "pending",
         fired_at: float | None = None) -> TriggerRow:
    return TriggerRow(rule_id=rule, ruleset_version="v", name=rule.replace("-", "_"), purpose=purpose, destinations=dests,
                      patient_key=pk, resource_key=f"Appointment/{i}", origin_key=f"t|{i}", resource_version="1",
                      due_at=due + i, status=status, message_kind=kind, payload="{}", created_at=T - 7200,
                      updated_at=T - 7200, fired_at=fired_at)


def store(engine, *objs) -> None:  # noqa: ANN001
    with Session(engine) as s:
        s.add_all(objs)
        s.commit()


def verdicts(engine) -> dict[str, tuple[str, str | None]]:  # noqa: ANN001
    with Session(engine) as s:
        return {t.origin_key: (t.status, t.reason) for t in s.exec(select(TriggerRow).where(TriggerRow.origin_key.startswith("t|")))}


def test_a_trigger_fired_earlier_in_the_batch_counts_toward_the_cap(engine, bundled):
    rs = with_caps(bundled, caps=Caps(per_day=1, per_week=None))
    store(engine, trig(1, "p1"), trig(2, "p1"), trig(3, "p2"))
    sched = Scheduler(engine, lambda: rs, clock=lambda: NOW, batch=500)
    assert sched.fire_due() == 3  # one batch
    v = verdicts(engine)
    assert v["t|1"] == ("fired", None)
    assert v["t|2"] == ("suppressed",
                        "cap reached: 1 'rebooking-outreach' messages to this patient in the last 24 hours (limit 1)")
    assert v["t|3"] == ("fired", None)
    assert sched.fired == 2
    with Session(engine) as s:
        assert sorted(d.trigger_id for d in s.exec(select(DeliveryRow))) == sorted(
            t.id for t in s.exec(select(TriggerRow).where(TriggerRow.status == "fired")))


def test_batched_caps_add_history_and_the_batch_per_window_and_kind(engine, bundled):
    # bundled settings: caps 2/day 5/week per message kind; treatment sms+voice 1/day 3/week across rules
    store(
        engine,
        # p1: one rebooking message 3 days ago, three more this week -> the week cap (5) is hit by the second due one
        *[trig(100 + k, "p1", status="fired", fired_at=T - (2 + k) * 86400) for k in range(4)],
        trig(1, "p1"), trig(2, "p1"),
        # p1 also has a different kind due: its own counter
        trig(3, "p1", rule="fuh-followup-7d", kind="bh-followup"),
        # p2: two treatment sms reminders from two rules in one batch -> the second one is capped (1/day, both rules)
        trig(4, "p2", rule="appointment-reminder-72h", purpose="treatment-reminder", kind="appointment-reminder", dests="sms"),
        trig(5, "p2", rule="appointment-reminder-24h", purpose="treatment-reminder", kind="appointment-reminder", dests="sms"),
        # ... and they count toward the 'appointment-reminder' kind too: a non-phone trigger of that kind fires once more
        trig(6, "p2", rule="not-a-rule", purpose="care-coordination", kind="appointment-reminder"),
        trig(7, "p2", rule="not-a-rule", purpose="care-coordination", kind="appointment-reminder"),
        # no message kind: counted together with the other triggers without one
        trig(8, "p3", kind=None), trig(9, "p3", kind=None), trig(10, "p3", kind=None),
        # no patient: never checked
        trig(11, None), trig(12, None), trig(13, None),
    )
    sched = Scheduler(engine, lambda: bundled, clock=lambda: NOW, batch=500)
    assert sched.fire_due() == 13
    v = verdicts(engine)
    assert v["t|1"] == ("fired", None)
    assert v["t|2"] == ("suppressed", "cap reached: 5 'rebooking-outreach' messages to this patient in the last 7 days (limit 5)")
    assert v["t|3"] == ("fired", None)
    assert v["t|4"] == ("fired", None)
    assert v["t|5"] == ("suppressed", "cap reached: 1 treatment calls/texts to this patient in the last 24 hours (limit 1)")
    assert v["t|6"] == ("fired", None)
    assert v["t|7"] == ("suppressed", "cap reached: 2 'appointment-reminder' messages to this patient in the last 24 hours (limit 2)")
    assert [v[f"t|{i}"][0] for i in (8, 9, 10)] == ["fired", "fired", "suppressed"]
    assert v["t|10"][1] == "cap reached: 2 'None' messages to this patient in the last 24 hours (limit 2)"
    assert [v[f"t|{i}"] for i in (11, 12, 13)] == [("fired", None)] * 3


def test_mixed_batch_opt_outs_and_marketing_authorizations_keep_their_verdicts(engine, bundled, monkeypatch):
    hospice_plan = {"resourceType": "CarePlan", "status": "active",
                    "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "385763009"}]}]}
    store(
        engine,
        Suppression(patient_key="optout", reason="STOP", created_at=T, source="sms-stop"),
        Suppression(patient_key="mkt-optout", purpose="marketing", reason="unsubscribe", created_at=T),
        Suppression(patient_key="dest-optout", destination="sms", reason="STOP sms only", created_at=T),
        Suppression(patient_key="revoked-optout", reason="old STOP", created_at=T - 100, revoked_at=T - 50),
        Authorization(patient_key="authorized", granted_at=T - 100),
        Authorization(patient_key="mkt-optout", granted_at=T - 100),
        Authorization(patient_key="auth-revoked", granted_at=T - 100, revoked_at=T - 10),
        Authorization(patient_key="other-purpose", purpose="research", granted_at=T - 100),
        PatientRow(key="deceased", fhir_id="d", resource=orjson.dumps({"resourceType": "Patient", "deceasedBoolean": True}).decode()),
        PatientRow(key="alive", fhir_id="a", resource=orjson.dumps({"resourceType": "Patient"}).decode()),
        ResourceState(key="CarePlan/h", resource_type="CarePlan", patient_key="hospice", resource=orjson.dumps(hospice_plan).decode(),
                      source="t"),
        ResourceState(key="CarePlan/h2", resource_type="CarePlan", patient_key="hospice-deleted", deleted=True,
                      resource=orjson.dumps(hospice_plan).decode(), source="t"),
    )
    cases = {  # origin -> (patient, purpose, expected verdict)
        1: ("optout", "care-coordination", "patient opted out: STOP"),
        2: ("optout", "marketing", "patient opted out: STOP"),
        3: ("mkt-optout", "care-coordination", None),
        4: ("mkt-optout", "marketing", "patient opted out: unsubscribe"),
        5: ("dest-optout", "care-coordination", None),
        6: ("revoked-optout", "care-coordination", None),
        7: ("authorized", "marketing", None),
        8: ("unauthorized", "marketing", "marketing requires a recorded authorization (prior express written consent) for this patient"),
        9: ("auth-revoked", "marketing", "marketing requires a recorded authorization (prior express written consent) for this patient"),
        10: ("other-purpose", "marketing", "marketing requires a recorded authorization (prior express written consent) for this patient"),
        11: ("unauthorized", "care-coordination", None),
        12: ("deceased", "care-coordination", "patient is deceased"),
        13: ("alive", "care-coordination", None),
        14: ("hospice", "care-coordination", "hospice: active hospice care plan"),
        15: ("hospice-deleted", "care-coordination", None),
        16: ("authorized", "marketing", None),  # a second marketing message for the same patient, other kind
    }
    store(engine, *[trig(i, pk, purpose=purpose, kind=f"k{i}") for i, (pk, purpose, _) in cases.items()])
    sched = Scheduler(engine, lambda: bundled, clock=lambda: NOW, batch=500)
    with recording(engine, monkeypatch) as seen:
        assert sched.fire_due() == len(cases)
    v = verdicts(engine)
    for i, (_, _, reason) in cases.items():
        assert v[f"t|{i}"] == (("suppressed", reason) if reason else ("fired", None)), i
    # one query per check for the whole batch, not per trigger (the merged keys and the consents
    # are read at fire time too: storage.privacy.read_privacy)
    assert 5 <= len(seen) <= 14, seen  # the batch was recorded: claim, merges, opt-outs, ... , the writes
