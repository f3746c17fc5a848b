"""Consent and opt-out are checked at send time; the reason is recorded on the delivery."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from middleware.config.destinations import Destination
from middleware.delivery.consent import consent_denies
from middleware.delivery.gate import send_time_block
from middleware.storage.sql import unit
from middleware.delivery.sink import SinkServer
from middleware.storage.tables import DeliveryAttempt, DeliveryRow, Disclosure, TriggerRow
from sqlmodel import Session

from support.api_client import api_for
from support.delivery_pipeline import WEBHOOK_SECRET, Pipeline, destination, make_pipeline, write_mappings

NOW = datetime(2025, 6, 1, tzinfo=timezone.utc)


def consent(provision: dict[str, Any], *, cid: str = "cons-1", status: str = "active", patient: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Consent", "id": cid, "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": patient or {"reference": "Patient/unknown"}, "provision": provision,
    }


DENY_HOOK2 = {"type": "permit", "provision": [{"type": "deny", "actor": [
    {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
     "reference": {"reference": "Organization/hook2"}}]}]}
DENY_CARE_COORD = {"type": "permit", "provision": [{"type": "deny", "purpose": [
    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "CAREMGT"}]}]}


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[tuple[Pipeline, SinkServer, str]]:
    with SinkServer([WEBHOOK_SECRET]) as sink:
        dests = [destination("hook", "webhook", webhook_url=sink.url + "/a"),
                 destination("hook2", "webhook", webhook_url=sink.url + "/b")]
        p = make_pipeline(db_url, write_mappings(tmp_path, dests))
        p.ingest(["siu_s26_v251.hl7"])
        p.fire()
        [t] = p.rows(TriggerRow)
        assert t.patient_key
        yield p, sink, t.patient_key


def _status(p: Pipeline) -> dict[str, tuple[str, str | None]]:
    return {d.destination: (d.status, d.last_error) for d in p.rows(DeliveryRow)}


def test_consent_deny_for_one_destination(world: tuple[Pipeline, SinkServer, str]) -> None:
    p, sink, pk = world
    api = api_for(p)
    r = api.post("/api/consents", params={"patient_key": pk}, json=consent(DENY_HOOK2))
    assert r.status_code == 201, r.text
    assert api.get("/api/consents", params={"patient_key": pk}).json()["items"][0]["fhir_id"] == "cons-1"
    p.deliver(p.worker())
    st = _status(p)
    assert st["hook"][0] == "delivered"
    assert st["hook2"][0] == "suppressed" and "consent cons-1: deny provision" in (st["hook2"][1] or "")
    assert len(sink.received()) == 1
    assert [d.destination for d in p.rows(Disclosure)] == ["hook"]
    attempts = p.rows(DeliveryAttempt, DeliveryAttempt.outcome == "suppressed")
    assert len(attempts) == 1 and "consent" in (attempts[0].error or "")


def test_consent_deny_for_purpose_and_replacement(world: tuple[Pipeline, SinkServer, str]) -> None:
    p, sink, pk = world
    api = api_for(p)
    assert api.post("/api/consents", params={"patient_key": pk}, json=consent(DENY_CARE_COORD)).status_code == 201
    p.deliver(p.worker())
    assert {s for s, _ in _status(p).values()} == {"suppressed"}
    assert sink.received() == []


def test_invalid_consent_is_refused(world: tuple[Pipeline, SinkServer, str]) -> None:
    p, _, pk = world
    bad = consent(DENY_HOOK2)
    bad["provision"] = "deny"  # not a BackboneElement
    r = api_for(p).post("/api/consents", params={"patient_key": pk}, json=bad)
    assert r.status_code == 422
    r = api_for(p).post("/api/consents", json=consent(DENY_HOOK2))  # Patient/unknown and no key
    assert r.status_code == 422


def test_opt_out_suppresses_immediately_with_reason(world: tuple[Pipeline, SinkServer, str]) -> None:
    p, sink, pk = world
    api = api_for(p)
    r = api.post("/api/suppressions", json={"patient_key": pk, "reason": "STOP reply", "source": "sms-stop"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert api.get("/api/suppressions", params={"patient_key": pk}).json()["items"][0]["id"] == sid
    p.deliver(p.worker())
    st = _status(p)
    assert {s for s, _ in st.values()} == {"suppressed"}
    assert all("opt-out" in (e or "") and "sms-stop" in (e or "") and "STOP reply" in (e or "") for _, e in st.values())
    assert sink.received() == [] and p.rows(Disclosure) == []
    # lifting the opt-out (kept with revoked_at) and replaying sends again
    assert api.delete(f"/api/suppressions/{sid}").json()["active"] is False
    assert api.post("/api/deliveries/replay", params={"status": "suppressed", "destination": "hook"}).json()["replayed"] == 1
    p.clock.now = datetime.now(timezone.utc)  # replay schedules at the real now
    p.deliver(p.worker())
    assert _status(p)["hook"][0] == "delivered"


def test_opt_out_for_one_destination_only(world: tuple[Pipeline, SinkServer, str]) -> None:
    p, _, pk = world
    api_for(p).post("/api/suppressions", json={"patient_key": pk, "destination": "hook2", "reason": "unsubscribe", "source": "unsubscribe"})
    p.deliver(p.worker())
    st = _status(p)
    assert st["hook"][0] == "delivered" and st["hook2"][0] == "suppressed"


def test_send_time_gate_baa_and_marketing(world: tuple[Pipeline, SinkServer, str]) -> None:
    p, _, pk = world
    api = api_for(p)
    with Session(p.engine) as s, unit(p.engine) as u:
        [t] = list(s.exec(__import__("sqlmodel").select(TriggerRow)))
        nobaa = Destination(name="x", type="webhook", baa=False)
        assert send_time_block(u, t, nobaa, NOW)[1].startswith("destination x has no business associate agreement")  # type: ignore[index]
        t.purpose = "marketing"
        ok = Destination(name="x", type="webhook", baa=True)
        assert "marketing requires a recorded authorization" in send_time_block(u, t, ok, NOW)[1]  # type: ignore[index]
    aid = api.post("/api/authorizations", json={"patient_key": pk, "reference": "form-17"}).json()["id"]
    with Session(p.engine) as s, unit(p.engine) as u:
        t = s.get(TriggerRow, t.id)
        t.purpose = "marketing"
        assert send_time_block(u, t, ok, NOW) is None
    api.delete(f"/api/authorizations/{aid}")
    with Session(p.engine) as s, unit(p.engine) as u:
        t = s.get(TriggerRow, t.id)
        t.purpose = "marketing"
        assert send_time_block(u, t, ok, NOW) is not None  # revocation honoured at send time


def test_consent_rules_pure() -> None:
    deny_all = consent({"type": "deny"})
    assert consent_denies([deny_all], purpose="marketing", destination="a", at=NOW)
    assert consent_denies([consent({"type": "deny"}, status="inactive")], purpose="marketing", destination="a", at=NOW) is None
    exc = consent({"type": "deny", "provision": [{"type": "permit", "purpose": [{"code": "TREAT"}]}]})
    assert consent_denies([exc], purpose="treatment-reminder", destination="a", at=NOW) is None
    assert consent_denies([exc], purpose="marketing", destination="a", at=NOW)
    expired = consent({"type": "permit", "provision": [{"type": "deny", "period": {"end": "2020-01-01T00:00:00Z"}}]})
    assert consent_denies([expired], purpose="marketing", destination="a", at=NOW) is None
    mk = consent(DENY_CARE_COORD)
    assert consent_denies([mk], purpose="marketing", destination="a", at=NOW) is None
    assert consent_denies([mk], purpose="care-coordination", destination="a", at=NOW)
