"""Dead letters and replay (one, a filter, a destination; CLI and API); the circuit breaker;
a refused static key pauses the destination, raises an alert and never starves the others."""
from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path

import pytest

from middleware.cli import main as cli
from middleware.delivery.registry import AuthFailure, Delivered, Retry
from middleware.delivery.retry import CircuitBreaker
from middleware.delivery.signing import generate_secret
from middleware.delivery.sink import SinkServer
from middleware.storage.tables import DeliveryAlert, DeliveryRow

from support.api_client import api_for
from support.delivery_pipeline import WEBHOOK_SECRET, Pipeline, destination, make_pipeline, write_mappings

FIXTURES = ["siu_s26_v251.hl7", "adt_a03_v23.hl7"]  # no-show (1 trigger) + discharge (3 TCM triggers)


def _world(db_url: str, tmp_path: Path, sink: SinkServer) -> Pipeline:
    dests = [destination("hook", "webhook", webhook_url=sink.url + "/a"),
             destination("hook2", "webhook", webhook_url=sink.url + "/b")]
    p = make_pipeline(db_url, write_mappings(tmp_path, dests))
    for f in FIXTURES:  # separate patients' worth of triggers (same synthetic patient, different appointments)
        p.ingest([f])
    p.fire()
    return p


def _statuses(p: Pipeline) -> dict[int, str]:
    return {d.id: d.status for d in p.rows(DeliveryRow)}  # type: ignore[misc]


def _now(p: Pipeline) -> None:
    p.clock.now = max(p.clock.now, datetime.now(timezone.utc))


def test_dead_letters_and_replay_one_filter_destination(tmp_path: Path, db_url: str) -> None:
    with SinkServer([WEBHOOK_SECRET]) as sink:
        p = _world(db_url, tmp_path, sink)
        n = len(p.rows(DeliveryRow))
        assert n >= 6
        sink.respond_with(400, times=n)  # every first attempt: permanent failure → dead letter
        p.deliver(p.worker())
        dead = p.rows(DeliveryRow, DeliveryRow.status == "dead")
        assert len(dead) == n and all(d.last_error == "HTTP 400" for d in dead)
        api = api_for(p)
        # one (API)
        one = dead[0].id
        assert api.post("/api/deliveries/replay", params={"delivery_id": one}).json() == {"replayed": 1}
        _now(p)
        p.deliver(p.worker())
        assert _statuses(p)[one] == "delivered"
        assert sum(s == "dead" for s in _statuses(p).values()) == n - 1
        # a filter (CLI): the no-show rule's remaining dead letter(s) by rule id and reason text
        out = io.StringIO()
        with redirect_stdout(out):
            assert cli(["deliveries", "replay", "--rule", "noshow-reengagement", "--reason", "HTTP 400",
                        "--database-url", p.db_url]) == 0
        replayed = int(out.getvalue().split()[1])
        assert replayed >= 1
        _now(p)
        p.deliver(p.worker())
        # a whole destination (CLI)
        with redirect_stdout(io.StringIO()):
            assert cli(["deliveries", "replay", "--destination", "hook2", "--database-url", p.db_url]) == 0
        _now(p)
        p.deliver(p.worker())
        left = p.rows(DeliveryRow, DeliveryRow.status == "dead")
        assert {d.destination for d in left} <= {"hook"}
        with redirect_stdout(io.StringIO()):
            assert cli(["deliveries", "replay", "--all", "--database-url", p.db_url]) == 0
        _now(p)
        p.deliver(p.worker())
        assert set(_statuses(p).values()) == {"delivered"}
        # the listing shows it all without payloads
        out = io.StringIO()
        with redirect_stdout(out):
            cli(["deliveries", "list", "--database-url", p.db_url])
        assert "delivered" in out.getvalue() and "MRN" not in out.getvalue()
        # 6 first attempts refused + 6 delivered: each delivery reached the sink exactly once successfully
        assert len({r["webhook_id"] for r in sink.received()}) == n


def test_auth_failure_pauses_alerts_and_does_not_starve_others(tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with SinkServer([WEBHOOK_SECRET]) as good, SinkServer([generate_secret()]) as refusing:
        dests = [destination("hook", "webhook", webhook_url=good.url + "/a"),
                 destination("hook2", "webhook", webhook_url=refusing.url + "/b")]  # signature refused → 401
        p = make_pipeline(db_url, write_mappings(tmp_path, dests))
        for f in FIXTURES:
            p.ingest([f])
        p.fire()
        with caplog.at_level(logging.ERROR, logger="careloop.delivery"):
            p.deliver(p.worker())
        st = {d.destination: set() for d in p.rows(DeliveryRow)}
        for d in p.rows(DeliveryRow):
            st[d.destination].add(d.status)
        assert st["hook"] == {"delivered"}  # the paused destination's backlog did not block this one
        assert st["hook2"] == {"pending"}  # retried later, durable
        hits = len(refusing.received())
        assert 1 <= hits <= 4  # the circuit opened on the first 401: at most the requests already in flight
        rec = [r for r in caplog.records if getattr(r, "action", "") == "delivery.auth-failure"]
        assert rec and rec[0].destination == "hook2" and rec[0].delivery_id  # type: ignore[attr-defined]
        [alert] = p.rows(DeliveryAlert)
        assert alert.kind == "auth-failure" and alert.destination == "hook2"
        api = api_for(p)
        body = api.get("/api/alerts").json()
        assert body["items"][0]["destination"] == "hook2" and "hook2" in body["paused"]
        # a new worker (restart) still honours the pause: it is durable
        _now(p)
        with p.engine.begin() as conn:  # make the backlog due: only the pause holds it back
            conn.exec_driver_sql("UPDATE delivery SET next_attempt_at = 0 WHERE status = 'pending'")
        p.deliver(p.worker())
        assert {d.status for d in p.rows(DeliveryRow, DeliveryRow.destination == "hook2")} == {"pending"}
        assert len(refusing.received()) == hits
        # the operator fixes the key (here: the receiver learns our secret) and resumes
        refusing.state.secrets = [WEBHOOK_SECRET]
        assert api.post("/api/destinations/hook2/resume").json()["resumed"] is True
        assert api.get("/api/alerts").json()["items"] == []
        p.deliver(p.worker())
        assert {d.status for d in p.rows(DeliveryRow)} == {"delivered"}


def test_circuit_breaker_pauses_probes_and_resumes() -> None:
    t = [0.0]
    br = CircuitBreaker(threshold=3, cool_s=10, max_cool_s=40, clock=lambda: t[0])
    for _ in range(3):
        assert br.budget() is None
        br.record(Retry("HTTP 503"))
    assert br.state == "open" and br.budget() == 0
    t[0] = 10.5
    assert br.state == "half-open" and br.budget() == 1  # one probe
    br.record(Retry("HTTP 503"))  # probe failed: open again for twice as long
    assert br.state == "open"
    t[0] = 10.5 + 19
    assert br.state == "open"
    t[0] = 10.5 + 21
    assert br.budget() == 1
    br.record(Delivered(200))
    assert br.state == "closed" and br.budget() is None
    br.record(AuthFailure("HTTP 401"))
    t[0] = 1e9
    assert br.state == "open-auth" and br.budget() == 0
    br.reset()
    assert br.state == "closed"
