"""Every sandbox scenario end to end: a change on HAPI -> HAPI's rest-hook notification ->
careloop event with the right transition -> trigger -> signed delivery to the local sink.

HAPI's notification is recognised by the ``X-Careloop-Subscription`` header HAPI sends from
the Subscription's ``channel.header`` (recorded in the inbound row's ``meta.subscription``),
its ``User-Agent`` (``meta.client == "hapi"``) and the Subscription on HAPI whose endpoint is
this careloop: the test itself never calls careloop's FHIR endpoint. Each test has its own
patient and its own Subscription ids. The demo mappings shorten the rules' waits to seconds
(``middleware/sandbox/demo_mappings.py``); every wait is a deadline-bounded poll.
"""
from __future__ import annotations

import uuid
from typing import Any

import pytest

from middleware.sandbox import hooks, journeys, scenarios
from middleware.sandbox.local import CareloopApi

pytestmark = [pytest.mark.hapi, pytest.mark.timeout(600)]

TRANSITIONS = {  # event type -> (previous status, status)
    "appointment.booked": (None, "booked"),
    "appointment.noshow": ("booked", "noshow"),
    "appointment.cancelled": ("booked", "cancelled"),
    "encounter.in-progress": (None, "in-progress"),
    "encounter.finished": ("in-progress", "finished"),
    "careplan.active": ("draft", "active"),
}
SINK_TYPE = {
    "noshow-reengagement": "appointment_noshow", "tcm-contact-2bd": "post_discharge_contact",
    "tcm-visit-7d": "post_discharge_visit_7d", "tcm-visit-14d": "post_discharge_visit_14d",
    "careplan-enrollment": "careplan_enrollment", "cancelled-not-rebooked-48h": "appointment_not_rebooked",
    "appointment-reminder-72h": "appointment_reminder",
}


@pytest.mark.parametrize("name", [n for n in journeys.SCENARIOS if n not in journeys.BULK])
def test_scenario_full_chain(name: str, careloop_factory: Any, hapi_client: Any, hapi_base_url: str) -> None:
    cl = careloop_factory()
    api = CareloopApi(cl.url)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    endpoint = cl.url + "/fhir/default"
    sub_ids = scenarios.prepare(hapi_client, api, endpoint, cl.token, prefix=prefix)
    try:
        journey = scenarios.build(name)
        report = scenarios.run(journey, hapi_base_url, api, sink=cl.sink.received, step_deadline_s=60)
        assert report.ok, [(s.step.title, s.missing) for s in report.steps]
        obs = report.steps[-1].observed

        # 1. every write reached careloop as a rest-hook call *from HAPI*, per Subscription
        for sid in sub_ids:
            sub = hapi_client.get(f"Subscription/{sid}").json()
            assert sub["status"] == "active" and sub["channel"]["endpoint"] == endpoint
        by_ref = {f"{m['meta']['resource_type']}/{m['meta']['id']}": m for m in obs.notifications}
        for step in report.steps:
            for ref, version in step.writes:
                hits = [m for m in obs.notifications if f"{m['meta']['resource_type']}/{m['meta']['id']}" == ref
                        and str(m["meta"].get("version")) == str(version)]
                assert hits, f"no HAPI notification for {ref} v{version}"
                meta = hits[0]["meta"]
                rtype = ref.split("/")[0]
                assert meta["subscription"] == f"{prefix}-{rtype.lower()}"
                assert meta["client"] == "hapi" and meta["method"] == "PUT" and meta["arrival"] == "notification"
                assert {"x-careloop-subscription", "authorization"} <= set(meta["header_names"])
        assert by_ref

        # 2. events with the right transition, from notifications
        for step in journey.steps:
            for etype in step.events:
                ev = [e for e in obs.events if e["type"] == etype]
                assert ev, etype
                assert (ev[0]["previous_status"], ev[0]["status"]) == TRANSITIONS[etype]
                assert ev[0]["arrival"] == "notification"

        # 3. triggers fired -> signed delivery to the sink; expected cancellations closed
        fired_rules = {r for step in journey.steps for r in step.fired}
        for rule in fired_rules:
            trig = [t for t in obs.triggers if t["rule_id"] == rule and t["status"] == "fired"]
            assert trig, rule
            got = [r for r in cl.sink.received() if r["trigger_id"] == trig[0]["id"]]
            assert got and got[0]["verified"] and got[0]["type"] == SINK_TYPE[rule]
            assert any(d["trigger_id"] == trig[0]["id"] and d["status"] == "delivered" for d in api.deliveries())
        for rule in {r for step in journey.steps for r in step.cancelled}:
            assert any(t["rule_id"] == rule and t["status"] in ("cancelled", "skipped") for t in obs.triggers), rule
            assert not any(t["rule_id"] == rule and t["status"] == "fired" for t in obs.triggers), rule
        for rule in {r for step in journey.steps for r in step.exited}:
            [entry] = [t for t in obs.triggers if t["rule_id"] == rule and t["status"] == "fired"]
            exits = [r for r in cl.sink.received() if r["type"] == "careloop_exit" and r["trigger_id"] == entry["id"]]
            assert len(exits) == 1 and exits[0]["verified"], rule
            assert set(exits[0]["body"]["data"]) == {"contact_key", "occurred_at", "journey", "trigger_id"}  # no reason
        if name == "discharge-then-followup-booked":
            assert not [r for r in cl.sink.received() if r["type"] in ("post_discharge_visit_7d", "post_discharge_visit_14d")]
    finally:
        hooks.delete(hapi_client, sub_ids)
