"""The rules playground over the real app (TestClient): the explain trace, timeline and destination
bodies of a pasted or stored message (the same dry run as ``careloop explain``), masked; nothing stored;
the golden tests; validation findings with file:line; CSRF, size limit, roles; no input in the logs."""
from __future__ import annotations

import hashlib
import html
import logging
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from middleware.pipeline.explain import Input, explain
from middleware.storage.inbox import InboundRecord, InboxWriter
from tests.conftest import REPO
from tests.support.console import client, console_runtime, sign_in, write_users

SIU = (REPO / "tests/fixtures/hl7/siu_s12_v251.hl7").read_bytes()
#: identifiers in that message (synthetic) that must never be shown
IDENTIFIERS = ("TESTPATIENT", "MRN000123", "123-45-6789", "5550101", "alpha@example.test", "19800215", "100 MAIN ST")
AT = "2024-03-01T09:00"


@pytest.fixture
def rt(db_url: str, mappings_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return console_runtime(db_url, mappings_dir, write_users(tmp_path / "users.yaml"))


def count(engine: Any, table: str) -> int:
    with engine.connect() as c:
        return int(c.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one())


def test_analyst_explains_a_pasted_siu_message(rt, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    csrf = sign_in(c, "ana")
    page = c.get("/playground")
    assert page.status_code == 200
    assert rt.ruleset().version in page.text and 'name="csrf"' in page.text
    pasted = SIU.decode().replace("\r", "\n")  # as a textarea sends it
    caplog.set_level(logging.DEBUG)
    r = c.post("/playground/explain", data={"csrf": csrf, "message": pasted, "at": AT, "horizon": "30"})
    assert r.status_code == 200, r.text
    body = r.text
    assert "[FIRES]" in body and "appointment-reminder-72h" in body and "appointment.booked" in body
    assert "where is false" in body and "[false] serviceType.memberOf(&#39;colonoscopy&#39;)" in body  # the clause trace
    # the exact webhook body, as careloop explain computes it (the same function), masked for display
    want = explain(rt.ruleset(), [Input("pasted", SIU, "pasted")], __import__("datetime").datetime.fromisoformat(AT).replace(
        tzinfo=__import__("zoneinfo").ZoneInfo(rt.ruleset().settings.site_timezone)))
    hook = next(r for e in want["events"] for r in e["rules"] if r["rule"] == "appointment-reminder-72h")["destinations"]["webhook"]
    assert hook["body"]["data"]["rule_id"] == "appointment-reminder-72h"
    m = re.search(r"<code>appointment-reminder-72h</code>.*?data-destination=\"webhook\">.*?<pre class=\"raw body\">(.*?)</pre>",
                  body, re.S)
    assert m and orjson.loads(html.unescape(m.group(1))) == hook["body"]  # nothing in it to mask: pseudonymous
    # the timeline: scheduled, then fired within the 30 days
    assert re.search(r"<td>scheduled</td><td>#1 appointment_reminder", body) and "<td>fired</td>" in body
    # identifiers masked everywhere on the page (the input is shown masked only)
    for ident in IDENTIFIERS:
        assert ident not in body, ident
    assert "PID|1|***|***" in body or "PID|1||***" in body
    # a dry run: nothing stored, and the pasted text is in no log record
    assert count(rt.engine, "inbound_message") == 0 and count(rt.engine, "trigger") == 0
    logged = "\n".join(rec.getMessage() + repr(rec.__dict__) for rec in caplog.records)
    for ident in IDENTIFIERS:
        assert ident not in logged, ident


def test_a_stored_message_is_explained_by_its_number(rt) -> None:  # type: ignore[no-untyped-def]
    InboxWriter(rt.engine).write_batch([InboundRecord(source="default", channel="mllp", raw=SIU, status="received",
                                                      sha256=hashlib.sha256(SIU).hexdigest())])
    with rt.engine.connect() as conn:
        msg_id = conn.execute(text("SELECT max(id) FROM inbound_message")).scalar_one()
    c = client(rt)
    csrf = sign_in(c, "ana")
    r = c.post("/playground/explain", data={"csrf": csrf, "message_id": str(msg_id), "at": AT, "horizon": "0"},
               headers={"HX-Request": "true"})
    assert r.status_code == 200
    assert "<html" not in r.text  # an htmx fragment
    assert f"message {msg_id}" in r.text and "appointment-reminder-24h" in r.text
    assert all(ident not in r.text for ident in IDENTIFIERS)
    assert count(rt.engine, "trigger") == 0
    missing = c.post("/playground/explain", data={"csrf": csrf, "message_id": "999999"})
    assert missing.status_code == 404 and "No stored message 999999" in missing.text


def test_fhir_input_is_explained_and_masked(rt) -> None:  # type: ignore[no-untyped-def]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "name": [{"family": "TESTPATIENT", "given": ["ALPHA"]}],
                      "birthDate": "1980-02-15", "telecom": [{"system": "phone", "value": "555-555-0101"}]}},
        {"resource": {"resourceType": "Appointment", "id": "ap1", "status": "booked", "start": "2024-04-02T09:15:00-04:00",
                      "end": "2024-04-02T09:45:00-04:00",
                      "participant": [{"actor": {"reference": "Patient/p1", "display": "TESTPATIENT, ALPHA"}, "status": "accepted"}]}}]}
    c = client(rt)
    csrf = sign_in(c, "ana")
    r = c.post("/playground/explain", data={"csrf": csrf, "message": orjson.dumps(bundle).decode(), "at": AT})
    assert r.status_code == 200
    assert "appointment.booked" in r.text and "Appointment/ap1" in r.text
    assert "TESTPATIENT" not in r.text and "1980-02-15" not in r.text and "555-555-0101" not in r.text
    bad = c.post("/playground/explain", data={"csrf": csrf, "message": "not a message", "at": AT})
    assert bad.status_code == 200 and "unreadable input" in bad.text


def test_golden_tests_and_validation_findings(rt, mappings_dir: Path) -> None:  # type: ignore[no-untyped-def]
    (mappings_dir.parent / "tests").symlink_to(REPO / "tests")  # the bundled cases read ../../tests/fixtures
    c = client(rt)
    csrf = sign_in(c, "ana")
    r = c.post("/playground/golden", data={"csrf": csrf}, headers={"HX-Request": "true"})
    assert r.status_code == 200
    m = re.search(r"(\d+) passed, (\d+) failed", r.text)
    assert m and int(m.group(1)) > 10 and m.group(2) == "0", r.text[:500]
    assert "appointments_test.yaml:" in r.text
    # break a file on disk: the page shows what `careloop mappings validate` reports, with file:line
    (mappings_dir / "rules" / "broken.yaml").write_text("rules:\n  - id: broken\n    on: [appointment.booked]\n    emitt: {}\n")
    page = c.get("/playground").text
    assert "do not validate" in page
    assert re.search(r"rules/broken\.yaml:\d+:\d+", page)
    assert rt.ruleset().version in page  # the running rules stay as loaded


def test_refusals_csrf_size_and_role(rt) -> None:  # type: ignore[no-untyped-def]
    c = client(rt)
    csrf = sign_in(c, "ana")
    assert c.post("/playground/explain", data={"message": SIU.decode(), "at": AT}).status_code == 403
    assert c.post("/playground/explain", data={"csrf": "forged", "message": SIU.decode()}).status_code == 403
    assert c.post("/playground/golden", data={}).status_code == 403
    big = c.post("/playground/explain", data={"csrf": csrf, "message": "MSH|" + "x" * 300_000})
    assert big.status_code == 413 and "x" * 100 not in big.text
    assert c.post("/playground/explain", data={"csrf": csrf, "message": ""}).status_code == 400
    otto = client(rt)
    otto_csrf = sign_in(otto, "otto")
    assert otto.get("/playground").status_code == 403
    assert otto.post("/playground/explain", data={"csrf": otto_csrf, "message": SIU.decode()}).status_code == 403
