"""careloop against real HAPI: a Subscription with payload and one without, and careloop down
for longer than HAPI's retry window while HAPI changes and deletes resources.

Notifications are recognised as HAPI's by the ``X-Careloop-Subscription`` header HAPI sends
(recorded in ``meta.subscription``) and HAPI's User-Agent; per-test Subscription ids.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from middleware.sandbox import demo_mappings, hooks, journeys
from middleware.sandbox.local import TOKEN_ENV, CareloopApi, free_port
from tests.support.fhir_e2e import events_about as _events, messages_about as _msgs, poll as _poll, put_version as _put

pytestmark = [pytest.mark.hapi, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
HAPI_RETRY_WINDOW_S = 60  # HAPI retries a failed rest-hook delivery for about a minute


def test_subscription_with_and_without_payload(careloop_factory: Any, hapi_client: Any) -> None:
    cl = careloop_factory()
    api = CareloopApi(cl.url)
    tag = uuid.uuid4().hex[:8]
    endpoint = cl.url + "/fhir/default"
    with_payload, bare = f"e2e-{tag}-appt-payload", f"e2e-{tag}-cp-bare"
    subs = [hooks.subscription(with_payload, "Appointment?", endpoint, cl.token, payload=True),
            hooks.subscription(bare, "CarePlan?", endpoint, cl.token, payload=False)]
    ids = hooks.apply(hapi_client, subs)
    try:
        # warm-up both (payload-less pings carry no resource id: any ping from `bare` counts)
        hooks.warm_up(hapi_client, "Appointment", lambda rid: bool(_msgs(api, f"Appointment/{rid}")),
                      rid=f"e2e-{tag}-warm")
        hooks.warm_up(hapi_client, "CarePlan", lambda rid: any(
            (m.get("meta") or {}).get("subscription") == bare for m in api.messages(200)), rid=f"e2e-{tag}-warm")

        pat = journeys.patient(tag)
        _put(hapi_client, pat)
        now = datetime.now(timezone.utc)
        appt = journeys.appointment(f"sbx-run-{tag}-appt", pat, now + timedelta(days=10), "booked")
        appt["participant"] = appt["participant"][:1]
        v = _put(hapi_client, appt)
        cp = journeys.careplan(f"sbx-run-{tag}-cp", pat, "active", now)
        cp_version = _put(hapi_client, cp)

        # with payload: PUT {endpoint}/Appointment/{id} carrying the version
        # (a sweep after the bare subscription's ping may also read this version back with a GET)
        put = _poll(lambda: [m for m in _msgs(api, f"Appointment/{appt['id']}")
                             if m["meta"].get("version") == v and m["meta"].get("method") != "GET"],
                    30, "payload notification")[0]["meta"]
        assert put["subscription"] == with_payload and put["method"] == "PUT" and put["client"] == "hapi"
        assert put["kind"] == "resource"
        # without payload: a bare POST {endpoint} (a ping), careloop re-reads from HAPI
        ping = _poll(lambda: [m for m in api.messages(200) if (m.get("meta") or {}).get("subscription") == bare
                              and m["meta"].get("kind") == "ping" and m["id"] > 0], 30, "payload-less ping")
        assert ping[0]["meta"]["method"] == "POST" and ping[0]["meta"]["client"] == "hapi"
        assert ping[0]["size"] == 0
        fetched = _poll(lambda: [m for m in _msgs(api, f"CarePlan/{cp['id']}") if m["meta"].get("method") == "GET"],
                        30, "careloop's read of the CarePlan after the ping")
        assert fetched[0]["meta"]["version"] == cp_version
        ev = _poll(lambda: [e for e in _events(api, f"CarePlan/{cp['id']}") if e["type"] == "careplan.active"],
                   30, "careplan.active")
        assert ev[0]["arrival"] == "notification"
        trig = _poll(lambda: [t for t in api.triggers() if t["event_id"] == ev[0]["id"] and t["status"] == "fired"],
                     30, "careplan-enrollment fired")
        _poll(lambda: [r for r in cl.sink.received() if r["trigger_id"] == trig[0]["id"] and r["verified"]],
              30, "sink delivery")
        ev_a = _poll(lambda: [e for e in _events(api, f"Appointment/{appt['id']}") if e["type"] == "appointment.booked"],
                     30, "appointment.booked")
        assert ev_a[0]["arrival"] == "notification"
    finally:
        hooks.delete(hapi_client, ids)


@pytest.mark.slow  # careloop stays down past HAPI's retry window (a duration)
def test_careloop_down_past_retry_window_then_reconciles(hapi_client: Any, hapi_base_url: str,
                                                         callback_hosts: tuple[str, str], tmp_path: Path) -> None:
    from support.server import start_subprocess  # a real process: killing it frees its port at once

    if callback_hosts[0] != "127.0.0.1":
        pytest.skip("careloop runs on loopback; a HAPI container cannot reach it (use the Java runtime)")
    # The default source as a FHIR source: careloop sweeps it at start-up (and every interval).
    mappings = tmp_path / "mappings"
    demo_mappings.prepare(REPO / "mappings", mappings, sink_url=None, fhir_base=hapi_base_url)
    src = (mappings / "sources.yaml").read_text()
    (mappings / "sources.yaml").write_text(src.replace("kind: hl7v2", "kind: fhir", 1))
    port, db, token = free_port(), f"sqlite:///{tmp_path}/reconcile.db", "e2e-reconcile-token"
    env = {TOKEN_ENV: token}
    cl = start_subprocess(db, mappings, tmp_path, env=env, http_port=port)
    api = CareloopApi(cl.http_url)
    tag = uuid.uuid4().hex[:8]
    endpoint = cl.http_url + "/fhir/default"
    ids = hooks.apply(hapi_client, hooks.sandbox_set(endpoint, token, f"e2e-{tag}"))
    cl2 = None
    try:
        for rtype in hooks.TYPES:
            hooks.warm_up(hapi_client, rtype, lambda rid, t=rtype: bool(_msgs(api, f"{t}/{rid}")), rid=f"e2e-{tag}-warm")
        pat = journeys.patient(tag)
        _put(hapi_client, pat)
        now = datetime.now(timezone.utc)
        keep = journeys.appointment(f"sbx-run-{tag}-a1", pat, now + timedelta(days=10), "booked")
        gone = journeys.appointment(f"sbx-run-{tag}-a2", pat, now + timedelta(days=12), "booked")
        for a in (keep, gone):
            a["participant"] = a["participant"][:1]
            _put(hapi_client, a)
        enc = journeys.encounter(f"sbx-run-{tag}-enc", pat, "in-progress", now - timedelta(days=2))
        _put(hapi_client, enc)
        for ref in (f"Appointment/{keep['id']}", f"Appointment/{gone['id']}", f"Encounter/{enc['id']}"):
            _poll(lambda ref=ref: _events(api, ref), 30, f"event for {ref}")

        cl.terminate()
        stopped = time.monotonic()
        _put(hapi_client, {**keep, "status": "cancelled"})
        r = hapi_client.delete(f"Appointment/{gone['id']}")
        assert r.status_code in (200, 204), r.text
        _put(hapi_client, journeys.encounter(enc["id"], pat, "finished", now - timedelta(days=2), now))
        # careloop must stay down longer than HAPI keeps retrying (a duration, not a condition)
        _poll(lambda: time.monotonic() - stopped > HAPI_RETRY_WINDOW_S + 10, HAPI_RETRY_WINDOW_S + 30,
              "HAPI's retry window to pass")

        cl2 = start_subprocess(db, mappings, tmp_path, env=env, http_port=port)
        api2 = CareloopApi(cl2.http_url)
        cancelled = _poll(lambda: [e for e in _events(api2, f"Appointment/{keep['id']}")
                                   if e["type"] == "appointment.cancelled"], 60, "appointment.cancelled")
        assert cancelled[0]["arrival"] == "reconcile" and cancelled[0]["previous_status"] == "booked"
        deleted = _poll(lambda: [e for e in _events(api2, f"Appointment/{gone['id']}")
                                 if e["type"] == "appointment.deleted"], 60, "appointment.deleted")
        assert deleted[0]["arrival"] == "reconcile"
        finished = _poll(lambda: [e for e in _events(api2, f"Encounter/{enc['id']}")
                                  if e["type"] == "encounter.finished"], 60, "encounter.finished")
        assert finished[0]["arrival"] == "reconcile" and finished[0]["previous_status"] == "in-progress"
        # what reconciliation stored came from careloop's own reads, not from a HAPI notification
        rows = [m for m in api2.messages(500) if (m.get("meta") or {}).get("arrival") == "reconcile"
                and (m.get("meta") or {}).get("id") in (keep["id"], gone["id"], enc["id"])]
        assert rows and all(m["meta"]["method"] == "GET" for m in rows)
    finally:
        hooks.delete(hapi_client, ids)
        for proc in (cl, cl2):
            if proc is not None:
                proc.terminate()
