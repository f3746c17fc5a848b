"""The careloop command as a user runs it: explain, validation errors, serve refusals, tokens."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import FIXTURES, REPO
from tests.support.server import free_port, start_in_process

CLI = [sys.executable, "-m", "middleware"]


def run(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_explain_json_lists_events_with_rules():
    r = run("explain", str(FIXTURES / "hl7" / "siu_s26_v251.hl7"), "--json", "--now", "2024-04-01T12:00:00Z")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ev = doc["events"][0]
    assert ev["type"] == "appointment.noshow"
    assert ev["resource"]["resourceType"] == "Appointment"
    rules = {x["rule"]: x for x in ev["rules"]}
    assert rules["noshow-reengagement"]["fired"] is True
    assert rules["noshow-reengagement"]["reason"]


def test_explain_human_says_why_a_rule_did_not_fire():
    r = run("explain", str(FIXTURES / "hl7" / "adt_a03_v251.hl7"), "--now", "2024-11-04T12:00:00Z")
    assert r.returncode == 0, r.stderr
    assert "encounter.finished" in r.stdout
    assert "where is false" in r.stdout  # expired patient: not a community discharge


def test_invalid_mapping_fails_at_start_with_file_and_line(mappings_dir: Path, tmp_path: Path):
    bad = mappings_dir / "rules" / "appointments.yaml"
    text = bad.read_text().replace("    purpose: care-coordination\n", "    purpose: care-coordination\n    dealy: 2d\n", 1)
    bad.write_text(text)
    line = text.splitlines().index("    dealy: 2d") + 1
    r = run("serve", "--mappings", str(mappings_dir), "--database-url", f"sqlite:///{tmp_path}/x.db",
            "--http-port", str(free_port()), "--mllp-port", str(free_port()))
    assert r.returncode == 1
    assert f"appointments.yaml:{line}:5: error[unknown-field] unknown field 'dealy'" in r.stderr
    v = run("mappings", "validate", str(mappings_dir))
    assert v.returncode == 1 and f"appointments.yaml:{line}:5" in v.stderr


def test_serve_refuses_non_loopback_without_token(tmp_path: Path):
    r = run("serve", "--http-host", "0.0.0.0", "--database-url", f"sqlite:///{tmp_path}/x.db")
    assert r.returncode == 2
    assert "refusing to listen beyond loopback" in r.stderr


def test_api_token_required_when_configured(tmp_path: Path, mappings_dir: Path, db_url: str):
    srv = start_in_process(db_url, mappings_dir, api_token="s3cret-token")
    try:
        assert httpx.get(srv.http_url + "/api/events").status_code == 401
        assert httpx.get(srv.http_url + "/api/events", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(srv.http_url + "/api/events", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        assert httpx.post(srv.http_url + "/hl7v2", content=b"MSH|").status_code == 401
    finally:
        srv.stop()


def test_events_catalogue_lists_fhir_statuses():
    r = run("events")
    names = r.stdout.split()
    for e in ("appointment.noshow", "appointment.rescheduled", "encounter.finished", "careplan.active", "careplan.activity.completed"):
        assert e in names
