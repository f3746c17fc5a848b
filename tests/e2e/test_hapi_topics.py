"""Topic-based subscriptions (R4 Subscriptions Backport IG) with real HAPI FHIR as the sender.

HAPI's R4 topic support needs ``SubscriptionTopicConfig`` in its launcher (the sandbox's has it).
The topics are careloop's own ``subscriptions/topics/topic-*.json``; the Subscriptions are built from
``careloop-topic-*.json`` exactly as ``careloop subscriptions apply --topic`` fills them, with per-test
ids (``e2e-<tag>-...``) so parallel sessions on the shared server never collide.

What HAPI 8.8 does and does not do (docs/sandbox.md "Topic-based subscriptions"), asserted here where it
matters and gated on what the server advertises:

* the R4 topic registry is a cache refreshed about every minute: a new Subscription is matched only after
  it (the warm-up writes until a notification arrives, up to ``WARM_UP_S``);
* no handshake and no heartbeat are sent (we ask for a heartbeat every 5 s); when a server does send
  them, careloop must record them (``fhir.sub.<source>.<id>`` state);
* ``$status`` / ``$events`` are offered only if the CapabilityStatement lists them, otherwise the server
  refuses them (HAPI 8.8: 400) and careloop recovers gaps by reconciliation;
* HAPI never sets ``error`` itself: an operator does (a PUT), and ``careloop subscriptions status`` shows it.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.sandbox import demo_mappings, hooks, journeys
from middleware.sandbox.local import TOKEN_ENV, CareloopApi, free_port
from tests.support.fhir_e2e import events_about as _events, messages_about as _msgs, poll as _poll, put_version as _put

pytestmark = [pytest.mark.hapi, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
TOPICS = REPO / "subscriptions" / "topics"
HAPI_RETRY_WINDOW_S = 60  # HAPI retries a failed delivery for about a minute (test_sandbox_delivery_modes)
WARM_UP_S = 150  # the R4 topic registry refreshes about every 60 s; two refreshes and slack
HEARTBEAT_S = 5
KNOWN_SILENT = ("8.8.",)  # HAPI versions verified to send neither handshake nor heartbeat (docs/sandbox.md)
Json = dict[str, Any]


# --------------------------------------------------------------------------- helpers
def _store_topics(client: httpx.Client) -> None:
    """PUT careloop's topics as ``apply --topic`` does (idempotent; unchanged content keeps the version)."""
    for path in sorted(TOPICS.glob("topic-*.json")):
        topic = json.loads(path.read_text())
        r = client.put(f"Basic/{topic['id']}", json=topic, headers=hooks.FHIR_JSON)
        assert r.status_code in (200, 201), r.text


def topic_subscription(sid: str, content: str, endpoint: str, token: str | None, rtype: str = "Appointment",
                       heartbeat_s: int | None = None) -> Json:
    """``careloop-topic-<type>.json`` filled like ``careloop subscriptions apply --topic <content>``,
    with id ``sid``, tag code ``sid`` and ``X-Careloop-Subscription: sid``."""
    from middleware.cli.subscriptions import _load

    sub = _load(TOPICS / f"careloop-topic-{rtype.lower()}.json", endpoint, token, content)
    sub["id"] = sid
    for t in sub["meta"]["tag"]:
        t["code"] = sid
    sub["channel"]["header"] = [h if not h.startswith(hooks.SUB_HEADER) else f"{hooks.SUB_HEADER}: {sid}"
                                for h in sub["channel"]["header"]]
    if heartbeat_s is not None:
        for ext in sub["channel"]["extension"]:
            if ext["url"].endswith("backport-heartbeat-period"):
                ext["valueUnsignedInt"] = heartbeat_s
    return sub  # type: ignore[no-any-return]


def _notes(api: CareloopApi, sid: str, ntype: str | None = "event-notification", duplicates: bool = False) -> list[Json]:
    """careloop's stored notifications from Subscription ``sid`` (oldest first); a redelivered event
    number is kept with status ``duplicate`` and left out unless ``duplicates``."""
    rows = [m for m in api.messages(500) if (m.get("meta") or {}).get("subscription") == sid
            and (m.get("meta") or {}).get("kind") == "notification" and (duplicates or m["status"] != "duplicate")]
    rows = [m for m in rows if ntype is None or m["meta"].get("notification_type") == ntype]
    return sorted(rows, key=lambda m: m["id"])


_ENGINES: dict[str, Any] = {}


def sub_state(database_url: str, sid: str, source: str = "default") -> Json:
    """careloop's counter state for Subscription ``sid`` (kv ``fhir.sub.<source>.<sid>``), or {}."""
    from middleware.pipeline.fhir_state import sub_key
    from middleware.storage.queries import kv
    from middleware.storage.schema import open_database
    from middleware.storage.sql import unit

    if database_url not in _ENGINES:
        _ENGINES[database_url] = open_database(database_url, existing=True)
    with unit(_ENGINES[database_url]) as u:
        return kv.get_json(u, sub_key(source, sid)) or {}


def _hapi_version(client: httpx.Client) -> str:
    return str(client.get("metadata", headers=hooks.FHIR_JSON).json().get("software", {}).get("version", "?"))


def _status_cli(database_url: str, mappings: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """``careloop subscriptions status`` as an operator runs it; its stdout."""
    import os

    out = subprocess.run([sys.executable, "-m", "middleware", "subscriptions", "status", "--database-url", database_url,
                          "--mappings", str(mappings)], cwd=cwd, env={**os.environ, **(env or {})},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _numbers(body: bytes) -> list[int]:
    """The event numbers of a backport notification as HAPI 8.8 writes them (``event-number`` valueString)."""
    params = json.loads(body)["entry"][0]["resource"]
    return [int(part["valueString"]) for p in params["parameter"] if p["name"] == "notification-event"
            for part in p["part"] if part["name"] == "event-number"]


class Relay:
    """A loopback relay between HAPI and careloop that keeps every body it forwards, so a test can
    replay one of HAPI's own notifications verbatim (a duplicate delivery)."""

    def __init__(self, target: str) -> None:
        self.target, self.bodies = target.rstrip("/"), []  # type: ignore[var-annotated]
        relay = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                relay.bodies.append((headers, body))
                r = httpx.post(relay.target + self.path, content=body, headers=headers, timeout=30)
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "application/octet-stream"))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- a, b, d, f
def test_topic_payloads_give_the_same_clinical_events_as_rest_hook(careloop_factory: Any, hapi_client: httpx.Client,
                                                                   tmp_path: Path) -> None:
    """full-resource, id-only and empty topic notifications from HAPI, and a rest-hook Subscription, each into
    its own careloop, for the same booked -> cancelled Appointment: the same clinical events everywhere,
    ``arrival`` notification; event numbers 1..n per subscription with no gap; a replayed duplicate counted once;
    handshake/heartbeat only as HAPI sends them."""
    kinds = ("full-resource", "id-only", "empty", "rest-hook")
    cls = {k: careloop_factory(database_url=f"sqlite:///{tmp_path}/{k}.db") for k in kinds}
    apis = {k: CareloopApi(cl.url) for k, cl in cls.items()}
    tag = uuid.uuid4().hex[:8]
    sids = {k: f"e2e-{tag}-{k}" for k in kinds}
    relay = Relay(cls["full-resource"].url)
    _store_topics(hapi_client)
    subs = [topic_subscription(sids[k], k, (relay.url if k == "full-resource" else cls[k].url) + "/fhir/default",
                               cls[k].token, heartbeat_s=HEARTBEAT_S) for k in kinds[:3]]
    subs.append(hooks.subscription(sids["rest-hook"], "Appointment?", cls["rest-hook"].url + "/fhir/default",
                                   cls["rest-hook"].token))
    ids = hooks.apply(hapi_client, subs)
    active_at = time.monotonic()
    try:
        def seen(rid: str) -> bool:
            topics = all(_notes(apis[k], sids[k]) for k in kinds[:3])
            return topics and bool(_msgs(apis["rest-hook"], f"Appointment/{rid}"))
        took = hooks.warm_up(hapi_client, "Appointment", seen, deadline_s=WARM_UP_S, rid=f"e2e-{tag}-warm")
        print(f"topic warm-up: {took:.1f} s until HAPI's topic registry matched all three subscriptions")

        pat = journeys.patient(tag)
        _put(hapi_client, pat)
        appt = journeys.appointment(f"sbx-run-{tag}-appt", pat, datetime.now(timezone.utc) + timedelta(days=10), "booked")
        appt["participant"] = appt["participant"][:1]
        ref = f"Appointment/{appt['id']}"
        _put(hapi_client, appt)
        for k in kinds:
            _poll(lambda k=k: [e for e in _events(apis[k], ref) if e["type"] == "appointment.booked"], 60, f"{k}: booked")
        _put(hapi_client, {**appt, "status": "cancelled"})
        for k in kinds:
            try:
                _poll(lambda k=k: [e for e in _events(apis[k], ref) if e["type"] == "appointment.cancelled"], 60,
                      f"{k}: cancelled")
            except AssertionError as exc:
                diag = {k2: [(m["id"], m["status"], m["meta"].get("event_numbers"), m["meta"].get("payload"))
                             for m in _notes(apis[k2], sids[k2], None, True)] for k2 in kinds[:3]}
                raise AssertionError(f"{exc}; relayed {[_numbers(b) for _, b in relay.bodies if b]}; notes {diag}; "
                                     f"state {sub_state(cls[k].database_url, sids[k]) if k != 'rest-hook' else ''}; "
                                     f"events {_events(apis[k], ref)}") from None
        time.sleep(2)  # anything late would show below
        got = {k: [(e["type"], e.get("previous_status"), e["arrival"]) for e in _events(apis[k], ref)] for k in kinds}
        assert got["rest-hook"][0][0] == "appointment.booked", got
        assert [t for t, _, _ in got["rest-hook"]][-1] == "appointment.cancelled"
        for k in kinds[:3]:
            assert got[k] == got["rest-hook"], f"{k} gave {got[k]}, rest-hook gave {got['rest-hook']}"
        assert all(a == "notification" for _, _, a in got["rest-hook"])

        # how each payload reached careloop: in the notification, or read back by careloop (id-only: the focus; empty: a sweep)
        for k in kinds[:3]:
            rows = _notes(apis[k], sids[k])
            assert {r["meta"]["payload"] for r in rows} == {k}, rows[-1]["meta"]
            assert all(r["meta"]["shape"] == "R4-backport" and r["meta"]["client"] == "hapi" for r in rows)
        reads = {k: [m for m in _msgs(apis[k], ref) if m["meta"].get("method") == "GET"] for k in kinds[:3]}
        assert reads["id-only"] and reads["empty"], "careloop must read the Appointment back for id-only and empty"
        assert all(m["meta"]["arrival"] == "notification" for m in reads["id-only"] + reads["empty"])

        # event numbers: 1..n per subscription, each stored once, in careloop's state with nothing missing.
        # HAPI may deliver them out of order (measured: 2 before 1) and resends any notification whose answer
        # is not a Bundle; careloop answers a transaction-response Bundle, so each arrives once.
        sent = [_numbers(b) for _, b in relay.bodies if b]
        assert len(sent) == len(set(map(tuple, sent))), f"HAPI resent notifications to careloop: {sent}"
        for k in kinds[:3]:
            nums = sorted(n for r in _notes(apis[k], sids[k]) for n in r["meta"]["event_numbers"])
            assert nums == list(range(1, len(nums) + 1)), f"{k}: {nums}"
            assert len(nums) >= 3  # warm-up(s), booked, cancelled
            st = sub_state(cls[k].database_url, sids[k])
            assert st["last_event"] == nums[-1] and st["missing"] == [] and st.get("gaps", 0) == 0, st

        # a duplicate delivery (HAPI sent event 1 twice once in our probe): HAPI's own last notification replayed
        headers, body = next((h, b) for h, b in reversed(relay.bodies) if b)
        before = sub_state(cls["full-resource"].database_url, sids["full-resource"])
        n_events = len(_events(apis["full-resource"], ref))
        r = httpx.post(cls["full-resource"].url + "/fhir/default", content=body, headers=headers, timeout=30)
        assert r.status_code in (200, 201, 202), r.text
        time.sleep(2)
        after = sub_state(cls["full-resource"].database_url, sids["full-resource"])
        assert (after["last_event"], after["missing"], after.get("gaps", 0)) == (before["last_event"], [], 0)
        assert len(_events(apis["full-resource"], ref)) == n_events
        nums = [n for r_ in _notes(apis["full-resource"], sids["full-resource"]) for n in r_["meta"]["event_numbers"]]
        assert len(nums) == len(set(nums)), f"a duplicate was processed twice: {nums}"
        dup = _notes(apis["full-resource"], sids["full-resource"], duplicates=True)[-1]
        assert dup["status"] == "duplicate" and dup["meta"]["event_numbers"] == _numbers(body), dup

        # handshake and heartbeat: recorded when the server sends them; HAPI 8.8 sends neither
        _poll(lambda: time.monotonic() - active_at > 3 * HEARTBEAT_S, 3 * HEARTBEAT_S + 5, "three heartbeat periods")
        version = _hapi_version(hapi_client)
        for k in kinds[:3]:
            extra = [r for r in _notes(apis[k], sids[k], None) if r["meta"].get("notification_type") in ("handshake", "heartbeat")]
            if extra:
                st = sub_state(cls[k].database_url, sids[k])
                assert st.get("events_since_start") is not None and st.get("last_notification_at"), st
            else:
                assert version.startswith(KNOWN_SILENT), (
                    f"HAPI {version} sent no handshake or heartbeat in {3 * HEARTBEAT_S} s: only {KNOWN_SILENT} is known "
                    "to behave so; check it and update docs/sandbox.md")
    finally:
        hooks.delete(hapi_client, ids)
        relay.close()


# --------------------------------------------------------------------------- e, f
def test_operations_and_error_status_as_the_server_offers(careloop_factory: Any, hapi_client: httpx.Client,
                                                          tmp_path: Path) -> None:
    """``$status``/``$events`` used only when the CapabilityStatement lists them (HAPI 8.8: not listed, and
    refused); a Subscription an operator sets to ``error`` (HAPI never does) shows in ``careloop subscriptions status``."""
    cl = careloop_factory()
    tag = uuid.uuid4().hex[:8]
    sid = f"e2e-{tag}-ops"
    _store_topics(hapi_client)
    # someone lists Subscriptions first: HAPI caches that search for a minute, and `status` must not be fooled
    assert hapi_client.get("Subscription?_count=200&_sort=_id", headers=hooks.FHIR_JSON).status_code == 200
    ids = hooks.apply(hapi_client, [topic_subscription(sid, "id-only", cl.url + "/fhir/default", cl.token)])
    try:
        cap = hapi_client.get("metadata", headers=hooks.FHIR_JSON).json()
        ops = {o["name"].lstrip("$") for rest in cap.get("rest") or [] for res in rest.get("resource") or []
               if res.get("type") == "Subscription" for o in res.get("operation") or []}
        for op in ("status", "events"):
            r = hapi_client.get(f"Subscription/{sid}/${op}", headers=hooks.FHIR_JSON)
            if op in ops:
                assert r.status_code == 200 and r.json().get("resourceType") == "Bundle", r.text[:300]
            else:  # not advertised: the server must not pretend (HAPI 8.8: 400 Unknown operation)
                assert r.status_code in (400, 404, 501), f"${op} not advertised but answered {r.status_code}"

        # HAPI leaves a failing Subscription active; an operator marks it, careloop reports it
        s = hapi_client.get(f"Subscription/{sid}", headers=hooks.FHIR_JSON).json()
        assert s["status"] == "active"
        s.update(status="error", error="operator: endpoint retired")
        assert hapi_client.put(f"Subscription/{sid}", json=s, headers=hooks.FHIR_JSON).status_code == 200
        assert hapi_client.get(f"Subscription/{sid}", headers=hooks.FHIR_JSON).json()["status"] == "error"
        out = _status_cli(cl.database_url, cl.mappings_dir, tmp_path)
        line = next((ln for ln in out.splitlines() if f"Subscription/{sid} " in ln), None)
        assert line is not None, out
        assert "server: error (operator: endpoint retired)" in line, line
        # the shared server's other sessions change Appointments too, so this subscription may have had events
        st = sub_state(cl.database_url, sid)
        assert (f"last event {st['last_event']} " in line) if st else ("no notification seen" in line), (st, line)
    finally:
        hooks.delete(hapi_client, ids)


# --------------------------------------------------------------------------- c, e
@pytest.mark.slow  # careloop stays down past HAPI's retry window (a duration)
def test_gap_after_careloop_was_down_is_detected_and_reconciled(hapi_client: httpx.Client, hapi_base_url: str,
                                                                callback_hosts: tuple[str, str], tmp_path: Path) -> None:
    """careloop down past HAPI's retry window while an Appointment is cancelled: the next notification's
    event number jumps, careloop records the gap, the reconciler reads the cancellation back
    (``arrival`` reconcile), and ``careloop subscriptions status`` shows the server's status, the last
    event number and the missing one."""
    from support.server import start_subprocess

    if callback_hosts[0] != "127.0.0.1":
        pytest.skip("careloop runs on loopback; a HAPI container cannot reach it (use the Java runtime)")
    # an hl7v2-kind source with a FHIR base: no start-up sweep, so only the gap can bring the change back
    mappings = tmp_path / "mappings"
    demo_mappings.prepare(REPO / "mappings", mappings, sink_url=None, fhir_base=hapi_base_url)
    port, db, token = free_port(), f"sqlite:///{tmp_path}/gap.db", "e2e-gap-token"
    env = {TOKEN_ENV: token}
    cl = start_subprocess(db, mappings, tmp_path, env=env, http_port=port)
    api = CareloopApi(cl.http_url)
    tag = uuid.uuid4().hex[:8]
    sid = f"e2e-{tag}-gap"
    _store_topics(hapi_client)
    ids = hooks.apply(hapi_client, [topic_subscription(sid, "full-resource", cl.http_url + "/fhir/default", token)])
    cl2 = None
    try:
        hooks.warm_up(hapi_client, "Appointment", lambda rid: bool(_notes(api, sid)), deadline_s=WARM_UP_S,
                      rid=f"e2e-{tag}-warm")
        pat = journeys.patient(tag)
        _put(hapi_client, pat)
        now = datetime.now(timezone.utc)
        appt = journeys.appointment(f"sbx-run-{tag}-a1", pat, now + timedelta(days=10), "booked")
        appt["participant"] = appt["participant"][:1]
        ref = f"Appointment/{appt['id']}"
        _put(hapi_client, appt)
        _poll(lambda: [e for e in _events(api, ref) if e["type"] == "appointment.booked"], 60, "booked")
        last = _poll(lambda: sub_state(db, sid).get("last_event"), 30, "event number in careloop's state")

        cl.terminate()
        stopped = time.monotonic()
        _put(hapi_client, {**appt, "status": "cancelled"})  # event last+1: HAPI cannot deliver it
        _poll(lambda: time.monotonic() - stopped > HAPI_RETRY_WINDOW_S + 10, HAPI_RETRY_WINDOW_S + 30,
              "HAPI's retry window to pass")

        cl2 = start_subprocess(db, mappings, tmp_path, env=env, http_port=port)
        api2 = CareloopApi(cl2.http_url)
        assert not [e for e in _events(api2, ref) if e["type"] == "appointment.cancelled"]
        other = journeys.appointment(f"sbx-run-{tag}-a2", pat, now + timedelta(days=12), "booked")
        other["participant"] = other["participant"][:1]
        _put(hapi_client, other)  # event last+2: the jump
        st = _poll(lambda: (s := sub_state(db, sid)).get("gaps") and s, 60, "the gap in careloop's state")
        # exactly [last+1] and last+2 on a server of our own; other sessions' Appointment changes (the
        # criteria is every Appointment) can widen the jump on a shared one
        assert last + 1 in st["missing"] and st["last_event"] >= last + 2 and st["gaps"] >= 1, st
        assert all(last < n < st["last_event"] for n in st["missing"]), st
        cancelled = _poll(lambda: [e for e in _events(api2, ref) if e["type"] == "appointment.cancelled"], 60,
                          "appointment.cancelled from the reconciler")
        assert cancelled[0]["arrival"] == "reconcile" and cancelled[0]["previous_status"] == "booked"
        rows = [m for m in api2.messages(500) if (m.get("meta") or {}).get("arrival") == "reconcile"
                and (m.get("meta") or {}).get("id") == appt["id"]]
        assert rows and all(m["meta"]["method"] == "GET" for m in rows)

        # the operator's view: server status (set to error as an operator would), last event, the missing number
        s = hapi_client.get(f"Subscription/{sid}", headers=hooks.FHIR_JSON).json()
        assert s["status"] == "active", "HAPI 8.8 left the Subscription active through the failed deliveries"
        s.update(status="error", error="operator: paused after outage")
        assert hapi_client.put(f"Subscription/{sid}", json=s, headers=hooks.FHIR_JSON).status_code == 200
        out = _status_cli(db, mappings, tmp_path, env)
        st = sub_state(db, sid)
        line = next((ln for ln in out.splitlines() if f"Subscription/{sid} " in ln), None)
        assert line is not None, out
        assert "server: error (operator: paused after outage)" in line, line
        shown = ",".join(map(str, st["missing"][:10]))
        assert f"last event {st['last_event']} " in line and f"gaps {st['gaps']}," in line, (st, line)
        assert f"missing {shown}" in line and "gap " in line, (st, line)
    finally:
        hooks.delete(hapi_client, ids)
        for proc in (cl, cl2):
            if proc is not None:
                proc.terminate()
