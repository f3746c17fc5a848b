"""The audit export for a synthetic patient lists exactly what each destination received
(same bytes hash, same fields); retention purges bodies and keeps the audit."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections import defaultdict
from contextlib import redirect_stdout
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import respx
from httpx import AsyncClient

from middleware.cli import main as cli
from middleware.delivery.audit import AppendOnlyError
from middleware.delivery.capture import leaf_paths
from middleware.delivery.retention import purge
from middleware.delivery.sink import SinkServer
from middleware.storage.tables import DeliveryRow, Disclosure, EventRow, InboundMessage, TriggerRow
from sqlmodel import Session

from support.api_client import api_for
from support.delivery_pipeline import WEBHOOK_SECRET, all_destinations, make_pipeline, write_mappings

from test_corpus import _mock_vendors  # type: ignore[import-not-found]

HOSTS = {"mc-test.rest.marketingcloudapis.com": "sfmc", "api.hubapi.com": "hubspot", "rest.iad-01.braze.com": "braze",
         "api.segment.io": "segment", "api.iterable.com": "iterable"}


def _deliver_everywhere(db_url: str, tmp_path: Path, sink: SinkServer):  # type: ignore[no-untyped-def]
    p = make_pipeline(db_url, write_mappings(tmp_path, all_destinations(sink.url + "/hooks")))
    p.ingest(["siu_s12_v251.hl7"])  # two reminders (72 h, 24 h) for one synthetic patient
    p.fire()
    received: dict[str, list[bytes]] = defaultdict(list)
    with respx.mock(assert_all_called=False) as router:
        _mock_vendors(router)

        async def go() -> None:
            async with AsyncClient() as http:
                w = p.worker(http)
                while await w.run_once():
                    pass
        asyncio.run(go())
        for c in router.calls:
            if c.request.url.host in HOSTS:
                received[HOSTS[c.request.url.host]].append(c.request.content)
    for r in sink.received():
        received["webhook"].append(orjson.dumps(r["body"]))
    return p, received


def test_export_lists_exactly_what_each_destination_received(tmp_path: Path, db_url: str) -> None:
    with SinkServer([WEBHOOK_SECRET]) as sink:
        p, received = _deliver_everywhere(db_url, tmp_path, sink)
    assert {d.status for d in p.rows(DeliveryRow)} == {"delivered"}
    pk = p.rows(TriggerRow)[0].patient_key
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli(["audit", "export", "--patient", pk, "--database-url", p.db_url, "--format", "json"]) == 0
    items = json.loads(out.getvalue())["items"]
    triggers = len(p.rows(TriggerRow, TriggerRow.status == "fired"))
    assert len(items) == triggers * 6
    by_dest: dict[str, list[dict]] = defaultdict(list)  # type: ignore[type-arg]
    for it in items:
        by_dest[it["destination"]].append(it)
    assert set(by_dest) == set(received) == {"webhook", "sfmc", "hubspot", "braze", "segment", "iterable"}
    for dest, rows in by_dest.items():
        sent = {hashlib.sha256(b).hexdigest(): b for b in received[dest]}
        # every disclosure names bytes the destination really received, and every request is disclosed
        assert {r["body_sha256"] for r in rows} == set(sent), dest
        for r in rows:
            body = sent[r["body_sha256"]]
            assert r["body_bytes"] == len(body)
            fields = set(r["fields"])
            assert fields and fields <= leaf_paths(orjson.loads(body)), (dest, fields)
            assert r["purpose"] and r["rule_id"] and r["ruleset_version"] and r["outcome"] == "delivered"
            if dest == "webhook":  # one delivery per request: the fields are exactly the body's
                assert fields == leaf_paths(orjson.loads(body))
            else:  # batched: this delivery's own part, which carries the allowed payload fields
                assert any(f.endswith("appointment_start") for f in fields), (dest, fields)
    # CSV export and the API agree with the JSON export
    out = io.StringIO()
    with redirect_stdout(out):
        cli(["audit", "export", "--patient", pk, "--database-url", p.db_url, "--format", "csv"])
    assert len(out.getvalue().strip().splitlines()) == len(items) + 1
    api = api_for(p).get("/api/audit", params={"patient_key": pk}).json()["items"]
    assert [a["id"] for a in api] == [i["id"] for i in items]


def test_retention_purges_bodies_and_keeps_the_audit(tmp_path: Path, db_url: str) -> None:
    with SinkServer([WEBHOOK_SECRET]) as sink:
        p, _ = _deliver_everywhere(db_url, tmp_path, sink)
    before = [(d.id, d.body_sha256, d.fields) for d in p.rows(Disclosure)]
    assert before
    far = (p.clock() + timedelta(days=31)).timestamp()
    report = purge(p.engine, now=far, days=30)
    assert report.inbound == 1 and report.events >= 1 and report.triggers >= 2
    assert all(m.raw is None and m.ack is None for m in p.rows(InboundMessage))
    assert all(e.resource == "{}" for e in p.rows(EventRow))
    assert all(t.payload == "{}" for t in p.rows(TriggerRow) if t.status != "pending")
    assert [(d.id, d.body_sha256, d.fields) for d in p.rows(Disclosure)] == before
    assert purge(p.engine, now=far, days=30).inbound == 0  # idempotent
    # the CLI job runs too (nothing left that old)
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli(["retention", "run", "--days", "1", "--database-url", p.db_url]) == 0
    assert "inbound_messages" in out.getvalue()


def test_disclosures_are_append_only(tmp_path: Path, db_url: str) -> None:
    with SinkServer([WEBHOOK_SECRET]) as sink:
        p, _ = _deliver_everywhere(db_url, tmp_path, sink)
    with Session(p.engine) as s:
        d = s.get(Disclosure, p.rows(Disclosure)[0].id)
        d.fields = "[]"
        s.add(d)
        with pytest.raises(AppendOnlyError):
            s.commit()
        s.rollback()
        s.delete(s.get(Disclosure, d.id))
        with pytest.raises(AppendOnlyError):
            s.commit()
