"""CLI admin actions are written to the admin audit with the OS user as actor, and
``careloop audit admin`` reads it (text and ``--json``, filters, one-line errors)."""
from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest

from middleware.cli import main as cli


def test_cli_actions_are_audited_and_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    db = ["--database-url", db_url]
    assert cli(["db", "upgrade", *db]) == 0  # commands other than serve never create a database
    assert cli(["deliveries", "replay", "--destination", "webhook", "--audit-reason", "vendor outage", *db]) == 0
    assert cli(["deliveries", "resume", "webhook", *db]) == 0
    assert cli(["retention", "run", "--reason", "monthly", *db]) == 0
    capsys.readouterr()
    assert cli(["audit", "admin", "--json", *db]) == 0
    doc = json.loads(capsys.readouterr().out)
    items = doc["items"]
    assert [i["action"] for i in items] == ["retention.run", "destination.resume", "deliveries.replay"]
    assert {i["actor"] for i in items} == {getpass.getuser()} and {i["channel"] for i in items} == {"cli"}
    assert items[2]["reason"] == "vendor outage" and items[2]["target_id"] == "webhook"
    assert items[0]["reason"] == "monthly" and "inbound_messages" in items[0]["detail"]
    assert doc["next_before_id"] is None
    assert cli(["audit", "admin", "--action", "destination.resume", *db]) == 0
    out = capsys.readouterr().out
    assert "destination.resume" in out and "deliveries.replay" not in out
    assert cli(["audit", "admin", "--since", "2099-01-01T00:00:00Z", "--json", *db]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == []
    assert cli(["audit", "admin", "--since", "last tuesday", *db]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
