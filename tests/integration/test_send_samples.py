"""``careloop send --samples``: the demo samples are re-dated relative to now with fresh control
ids, so on a real server (real MLLP socket, real SQLite, real webhook receiver) the shipped
rules schedule the reminders and fire the no-show outreach and the discharge follow-up instead
of skipping them as past."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.delivery.sink import SinkServer
from middleware.samples import sample_paths
from middleware.samples.shift import shift_samples
from tests.support.server import start_in_process, wait_until


def _segs(msg: bytes) -> dict[str, list[str]]:
    return {s.split("|")[0]: s.split("|") for s in msg.decode().split("\r") if s}


def test_shift_keeps_gaps_moves_stories_and_renews_control_ids():
    now = datetime(2026, 7, 1, 16, 0, 30, tzinfo=timezone.utc)
    raw = [p.read_bytes() for p in sample_paths()]
    out, ids = shift_samples(raw, now)
    assert len(ids) == len(raw) == len(set(ids)) and all(i.startswith("DEMO26070116003000") and len(i) == 20 for i in ids)
    booked, noshow, admit, discharge, cancel = (_segs(m) for m in out)
    assert [m["MSH"][9] for m in (booked, noshow, admit, discharge, cancel)] == ids
    # each story's last message an hour ago (EDT in July), gaps inside a story kept
    assert booked["MSH"][6] == "20260701110030-0400" and discharge["MSH"][6] == "20260701110030-0400"
    assert booked["AIS"][4] == "20260708150030-0400"  # booked 03-03 09:00 EST for 03-10 14:00 EDT: 7 d 4 h later
    assert admit["EVN"][2] == "20260628073530-0400"  # admitted 3 d 3 h 25 min before the discharge message
    assert discharge["PV1"][44] == admit["EVN"][2]
    # dates of birth (8 digits) are not timestamps to move; separators untouched
    assert booked["PID"][7] == "19800215" and booked["MSH"][1] == "^~\\&"
    # without an offset a timestamp stays without one
    bare, _ = shift_samples([b"MSH|^~\\&|A|B|C|D|20250303090000||ADT^A01|X|P|2.5.1\rEVN||202503030800\r"], now)
    assert _segs(bare[0])["MSH"][6] == "20260701110030" and _segs(bare[0])["EVN"][2] == "20260701100030"


@pytest.fixture
def demo_mappings(mappings_dir: Path) -> Path:
    """The shipped rules with quiet hours off, so the result does not depend on the hour the test runs."""
    p = mappings_dir / "settings.yaml"
    lines = [ln for ln in p.read_text().splitlines() if not ln.startswith("quiet_hours:")]
    p.write_text("\n".join(lines + ["quiet_hours: null", ""]))
    return mappings_dir


@pytest.fixture
def sink():
    with SinkServer([DEV_WEBHOOK_SECRET]) as s:
        yield s


@pytest.fixture
def server(tmp_path, demo_mappings, sink, monkeypatch):
    monkeypatch.setenv("CARELOOP_WEBHOOK_URL", sink.url + "/hooks")
    monkeypatch.setenv("CARELOOP_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
    srv = start_in_process(f"sqlite:///{tmp_path}/c.db", demo_mappings)
    yield srv
    srv.stop()


def _triggers(server) -> list[dict]:
    return server.get("/api/triggers?limit=100")["items"]


def test_send_samples_demo_fires_on_a_real_server(server, sink, capsys):
    assert main(["send", "--samples", "--port", str(server.mllp_port)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.match(r"samples re-dated relative to now .* fresh control ids \(MSH-10 DEMO\d{14}01\.\.05\)", out[0])
    assert len(out) == 6 and all(" AA " in line for line in out[1:]), out
    kinds = {r["body"]["type"] for r in wait_until(
        lambda: sink.received() if {"appointment_noshow", "post_discharge_contact"} <= {
            r["body"]["type"] for r in sink.received()} else None, what="no-show and discharge webhooks")}
    assert {"appointment_noshow", "post_discharge_contact"} <= kinds
    trig = wait_until(lambda: [t for t in _triggers(server)] or None, what="triggers")
    by_rule = {t["rule_id"]: t for t in trig}
    assert not [t for t in trig if t["status"] == "skipped"], trig
    assert by_rule["appointment-reminder-72h"]["status"] == "pending"
    assert by_rule["appointment-reminder-24h"]["status"] == "pending"
    assert by_rule["tcm-visit-7d"]["status"] == "pending"
    # sent again a second later: fresh control ids, so not dropped as duplicates of the first run
    assert main(["send", "--samples", "--port", str(server.mllp_port)]) == 0
    msgs = wait_until(lambda: (lambda items: items if len(items) >= 10 else None)(
        server.get("/api/messages?limit=100")["items"]), what="second run stored")
    assert len({m["control_id"] for m in msgs}) == 10


def test_as_is_sends_the_files_unchanged(server, capsys):
    assert main(["send", "--samples", "--as-is", "--port", str(server.mllp_port)]) == 0
    out = capsys.readouterr().out
    assert "re-dated" not in out and "DEMO0001" in out
    assert datetime.now(timezone.utc) - timedelta(days=1) > datetime(2025, 3, 31, tzinfo=timezone.utc)


def test_readme_explain_examples_print_fires(capsys):
    """Every `careloop explain` line of the README runs and shows a firing rule."""
    import shlex

    repo = Path(__file__).resolve().parents[2]
    lines = [ln.split("#")[0].strip() for ln in (repo / "README.md").read_text().splitlines()
             if ln.startswith(".venv/bin/careloop explain ")]
    assert len(lines) >= 2
    for ln in lines:
        argv = shlex.split(ln)[1:]
        argv = [str(repo / a) if (repo / a).is_file() else a for a in argv]
        assert main(argv + ["--mappings", str(repo / "mappings")]) == 0, ln
        out = capsys.readouterr().out
        assert "[FIRES]" in out or '"status": "pending"' in out, (ln, out)
        assert "SKIPPED" not in out and '"status": "skipped"' not in out, (ln, out)
