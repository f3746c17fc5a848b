"""`careloop reprocess` previews by default: nothing written, nothing sent (a real webhook
receiver on loopback gets no call), and `--apply` does it (the receiver gets the call).
Unknown rule ids, unparseable times and a missing or empty database are one-line errors."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from sqlmodel import Session, select

from middleware.cli import main as cli
from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.delivery.sink import SinkServer
from middleware.pipeline.process import Processor
from middleware.rules.load import load_ruleset
from middleware.scheduler.runner import Scheduler
from middleware.storage.db import init_db, make_engine
from middleware.storage.tables import InboundMessage
from tests.conftest import FIXTURES

WELCOME = """  - id: appointment-booked-welcome
    on: [appointment.booked]
    purpose: care-coordination
    on_no_longer_matching: keep
    channel: email
    emit: {trigger: appointment_welcome, destinations: [webhook]}

  - id: noshow-reengagement"""


def _quiet_hours_off(m: Path) -> None:
    p = m / "settings.yaml"
    p.write_text("\n".join("quiet_hours: null" if ln.startswith("quiet_hours:") else ln
                           for ln in p.read_text().splitlines()) + "\n")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stored(request: pytest.FixtureRequest, tmp_path: Path, mappings_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """A database (SQLite, PostgreSQL) holding one booked appointment (its reminders long past),
    and mappings with a new rule that the stored event would have fired (a "mapping fix")."""
    _quiet_hours_off(mappings_dir)
    rs, _ = load_ruleset(mappings_dir)
    db = (f"sqlite:///{tmp_path / 'care.db'}" if request.param == "sqlite"
          else str(request.getfixturevalue("postgres_url")))
    engine = make_engine(db)
    init_db(engine)
    raw = (FIXTURES / "hl7" / "siu_s12_v23.hl7").read_bytes()
    with Session(engine) as s:
        s.add(InboundMessage(source="default", channel="mllp", received_at=1.0, raw=raw,
                             sha256=hashlib.sha256(raw).hexdigest(), status="received"))
        s.commit()
    Processor(engine, lambda: rs).drain()
    p = mappings_dir / "rules" / "appointments.yaml"
    p.write_text(p.read_text().replace("  - id: noshow-reengagement", WELCOME, 1))
    monkeypatch.delenv("CARELOOP_DATABASE_URL", raising=False)
    monkeypatch.setenv("CARELOOP_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
    return db, engine, raw


def _counts(db: str) -> tuple[int, ...]:
    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            return tuple(conn.exec_driver_sql(sql).scalar_one() for sql in (
                'SELECT COUNT(*) FROM "trigger"', "SELECT COUNT(*) FROM delivery",
                "SELECT COALESCE(SUM(LENGTH(resource)), 0) + COUNT(*) FROM event"))
    finally:
        engine.dispose()


def _deliver(engine, mappings: Path, db: str, monkeypatch, sink: SinkServer) -> None:
    rs, _ = load_ruleset(mappings)
    Scheduler(engine, lambda: rs).fire_due()
    monkeypatch.setenv("CARELOOP_WEBHOOK_URL", sink.url + "/hooks")
    assert cli(["deliveries", "run", "--until-idle", "--database", str(db), "--mappings", str(mappings)]) == 0
    print("--")


def test_preview_writes_and_sends_nothing_apply_sends(stored, mappings_dir: Path, monkeypatch, capsys):
    db, engine, raw = stored
    before = _counts(db)
    with SinkServer([DEV_WEBHOOK_SECRET]) as sink:
        assert cli(["reprocess", "--database", str(db), "--mappings", str(mappings_dir)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("PREVIEW (nothing written, nothing sent; add --apply to do it): 1 event(s)")
        assert "would create 1 trigger(s) (1 pending" in out and "1 would be due now" in out
        line = next(ln for ln in out.splitlines() if "appointment-booked-welcome" in ln)
        assert line.split()[0] == "create" and "ck_" in line and "due NOW" in line and line.endswith("-> webhook")
        for phi in ("MRN000123", "TESTPATIENT", "ALPHA", "19800215", "1980-02-15", "MAIN ST"):  # the fixture's PID
            assert phi not in out
        assert _counts(db) == before  # nothing written
        _deliver(engine, mappings_dir, db, monkeypatch, sink)
        assert sink.received() == []  # nothing sent

        assert cli(["reprocess", "--apply", "--database", str(db), "--mappings", str(mappings_dir)]) == 0
        out = capsys.readouterr().out.split("--\n")[-1]
        assert out.startswith("applied: 1 event(s)") and "create 1 trigger(s)" in out
        assert _counts(db)[0] == before[0] + 1
        _deliver(engine, mappings_dir, db, monkeypatch, sink)
        got = [r for r in sink.received() if r["verified"]]
        assert len(got) == 1 and "appointment_welcome" in str(got[0])
        # once applied, a second preview has nothing left to do (never doubles)
        assert cli(["reprocess", "--database", str(db), "--mappings", str(mappings_dir)]) == 0
        assert "would create 0 trigger(s)" in capsys.readouterr().out


def test_preview_json_lists_what_would_be_created(stored, mappings_dir: Path, capsys):
    import json

    db, _, _ = stored
    assert cli(["reprocess", "--json", "--database", str(db), "--mappings", str(mappings_dir),
                "--rule", "appointment-booked-welcome", "--since", "2000-01-01", "--until", "1d"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["applied"] is False and doc["counts"]["create"] == 1 and doc["counts"]["send_now"] == 1
    (item,) = doc["triggers"]
    assert item["rule"] == "appointment-booked-welcome" and item["destinations"] == ["webhook"]
    assert item["contact_key"].startswith("ck_") and item["trigger_id"] is None and item["event_id"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--rule", "appointment-booked-welcom"], "--rule 'appointment-booked-welcom' is not a rule in the loaded mappings; "
                                              "did you mean 'appointment-booked-welcome'?"),
    (["--since", "yesterday"], "--since 'yesterday' is not a time; use an ISO 8601 date (2026-03-01)"),
    (["--until", "3 days ago"], "--until '3 days ago' is not a time"),
    (["--until=-1x"], "a time ago: 2d, 12h, 30m, 1w (also written -2d)"),
    (["--since", "2024-03-02", "--until", "2024-03-01"], "is not after --since"),
    (["--source", "defualt"], "did you mean 'default'?"),
])
def test_user_errors_are_one_line(stored, mappings_dir: Path, capsys, argv, message):
    db, _, _ = stored
    before = _counts(db)
    assert cli(["reprocess", "--database", str(db), "--mappings", str(mappings_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("careloop reprocess: ") and message in err and err.count("\n") == 1, err
    assert _counts(db) == before


def test_missing_or_empty_database_is_refused_and_never_created(tmp_path: Path, mappings_dir: Path, monkeypatch, capsys):
    monkeypatch.delenv("CARELOOP_DATABASE_URL", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli(["reprocess", "--mappings", str(mappings_dir)]) == 2
    err = capsys.readouterr().err
    assert err == (f"careloop: no careloop database at {elsewhere / '.careloop' / 'careloop.db'}; point at yours with "
                   "--database PATH|URL or CARELOOP_DATABASE_URL (`careloop serve` creates one, `careloop db upgrade` "
                   "an empty one)\n")
    assert not (elsewhere / ".careloop").exists()  # nothing created in the current folder
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert cli(["reprocess", "--database", str(empty), "--mappings", str(mappings_dir)]) == 2
    assert "is empty (never initialized by careloop)" in capsys.readouterr().err
    fresh = tmp_path / "fresh.db"
    init_db(make_engine(f"sqlite:///{fresh}"))  # initialized, but holds no events: the wrong database
    assert cli(["reprocess", "--database", f"sqlite:///{fresh}", "--mappings", str(mappings_dir)]) == 1
    err = capsys.readouterr().err
    assert "holds no stored events to replay: is it the right database?" in err and err.count("\n") == 1


def test_inbound_preview_changes_no_message(stored, mappings_dir: Path, capsys):
    db, engine, raw = stored
    with Session(engine) as s:
        s.add(InboundMessage(source="default", channel="mllp", received_at=2.0, raw=raw + b"X",
                             sha256="x" * 64, status="failed", error="earlier mapping bug"))
        s.commit()
    assert cli(["reprocess", "--inbound", "--database", str(db), "--mappings", str(mappings_dir)]) == 0
    assert "would re-run 1 failed/ignored inbound message(s)" in capsys.readouterr().out
    with Session(engine) as s:
        assert [m.status for m in s.exec(select(InboundMessage).order_by(InboundMessage.id))] == ["processed", "failed"]
    assert cli(["reprocess", "--inbound", "--apply", "--database", str(db), "--mappings", str(mappings_dir)]) == 0
    assert "requeued 1 failed/ignored inbound message(s); processed 1" in capsys.readouterr().out


def test_sqlite_preview_needs_no_write_lock(stored, mappings_dir: Path, capsys):
    db, engine, _ = stored
    if not db.startswith("sqlite"):
        pytest.skip("the copy is for SQLite files; PostgreSQL previews in a rolled-back transaction")
    writer = sqlite3.connect(db.split("///", 1)[1], timeout=0.1)
    writer.execute("BEGIN IMMEDIATE")  # a running careloop in the middle of a write
    writer.execute("UPDATE inbound_message SET attempts = attempts + 1")
    try:
        assert cli(["reprocess", "--database", db, "--mappings", str(mappings_dir)]) == 0
    finally:
        writer.rollback()
        writer.close()
    assert "would create 1 trigger(s)" in capsys.readouterr().out


def test_database_may_be_a_plain_path_in_the_environment(stored, mappings_dir: Path, monkeypatch, capsys):
    db, _, _ = stored
    if not db.startswith("sqlite"):
        pytest.skip("a plain path names a SQLite file")
    monkeypatch.setenv("CARELOOP_DATABASE_URL", db.split("///", 1)[1])
    assert cli(["reprocess", "--mappings", str(mappings_dir)]) == 0
    assert "would create 1 trigger(s)" in capsys.readouterr().out
