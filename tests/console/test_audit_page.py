"""The audit page (TestClient over the real app, the selected backend): the admin audit with the API's
filters and keyset pages, its CSV export (itself audited), auditors and admins only."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from middleware.delivery.admin_audit import record
from tests.support.console import client, console_runtime, sign_in, write_users


@pytest.fixture
def rt(db_url: str, mappings_dir: Path, tmp_path: Path) -> Any:
    rt = console_runtime(db_url, mappings_dir, write_users(tmp_path / "users.yaml"))
    for i in range(7):
        record(rt.engine, actor="ops-token", channel="api", action="deliveries.replay", target_kind="delivery",
               target_id=str(i), reason=f"r{i}", at=1_700_000_000 + i)
    record(rt.engine, actor="otto", channel="console", action="destination.pause", target_kind="destination", target_id="hook",
           reason="maintenance", at=1_800_000_000)
    return rt


def _ids(text: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-action="[^"]+">\s*<td>(\d+)</td>', text)]


def test_lists_filters_and_pages(rt: Any) -> None:
    c = client(rt)
    sign_in(c, "aud")
    text = c.get("/audit").text
    assert "destination.pause" in text and "maintenance" in text and "console.signin" in text
    ids = _ids(text)
    assert ids == sorted(ids, reverse=True) and len(ids) == 9  # 8 recorded + aud's sign-in
    only = c.get("/audit", params={"action": "deliveries.replay", "actor": "ops-token"}).text
    assert len(_ids(only)) == 7 and "destination.pause" not in only.split("<tbody>")[1]
    recent = c.get("/audit", params={"since": "2026-01-01", "action": "destination.pause"}).text
    assert len(_ids(recent)) == 1
    assert c.get("/audit", params={"since": "yesterday-ish"}).status_code == 422
    # keyset pages of 3 through the replays: every row once
    seen: list[int] = []
    url: str | None = "/audit?action=deliveries.replay&limit=3"
    while url:
        page = c.get(url.replace("&amp;", "&")).text
        seen += _ids(page)
        m = re.search(r'rel="next" href="([^"]+)"', page)
        url = (m.group(1) + "&limit=3") if m else None
    assert len(seen) == 7 and len(set(seen)) == 7


def test_csv_export_is_audited(rt: Any) -> None:
    c = client(rt)
    sign_in(c, "aud")
    r = c.get("/audit.csv", params={"action": "deliveries.replay"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["target_id"] for x in rows] == [str(i) for i in range(6, -1, -1)]
    assert {x["actor"] for x in rows} == {"ops-token"} and rows[0]["reason"] == "r6"
    export = c.get("/audit", params={"action": "admin-audit.export"}).text
    assert len(_ids(export)) == 1 and "aud" in export
    body = c.get("/audit.csv", params={"action": "admin-audit.export"}).text
    [row] = list(csv.DictReader(io.StringIO(body)))
    assert row["actor"] == "aud" and row["channel"] == "console"
    assert json.loads(row["detail"]) == {"rows": 7, "format": "csv", "action": "deliveries.replay"}


@pytest.mark.parametrize("who,status", [("ana", 403), ("otto", 403), ("aud", 200), ("root", 200)])
def test_who_may_read(rt: Any, who: str, status: int) -> None:
    c = client(rt)
    sign_in(c, who)
    assert c.get("/audit").status_code == status
    assert c.get("/audit.csv").status_code == status
