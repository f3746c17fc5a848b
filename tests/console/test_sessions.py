"""Console sessions in the database: hashed tokens, shared by replicas, idle and absolute ends,
a last-seen write at most once an interval, purge; sign-in throttling and its constant-time answer."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from middleware.console import sessions
from middleware.console.access import SESSION_COOKIE
from middleware.console.pages.signin import ANSWER_FLOOR_S
from middleware.storage.queries import admin_audit as aq
from middleware.storage.sql import unit
from middleware.storage.tables import ConsoleSession
from tests.support.console import client, console_runtime, password_of, sign_in, write_users


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return write_users(tmp_path / "users.yaml")


def _rows(rt) -> list[ConsoleSession]:  # type: ignore[no-untyped-def]
    with Session(rt.engine) as s:
        return list(s.exec(select(ConsoleSession)).all())


def test_only_the_token_hash_is_stored_with_user_roles_and_csrf(db_url: str, mappings_dir: Path, users: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, users, console_session_max_s=3600.0)
    c = client(rt)
    csrf = sign_in(c, "aud")
    token = c.cookies[SESSION_COOKIE]
    [row] = _rows(rt)
    assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_sha256
    assert (row.user_name, row.roles, row.method, row.csrf) == ("aud", '["auditor"]', "password", csrf)
    assert row.expires_at == pytest.approx(row.created_at + 3600.0)


def test_replicas_share_sessions_and_sign_out_ends_it_everywhere(db_url: str, mappings_dir: Path, users: Path) -> None:
    one, two = console_runtime(db_url, mappings_dir, users), console_runtime(db_url, mappings_dir, users)
    a, b = client(one), client(two)
    csrf = sign_in(a, "otto")
    cookie = {"cookie": f"{SESSION_COOKIE}={a.cookies[SESSION_COOKIE]}"}
    assert b.get("/", headers=cookie).status_code == 200  # opened on replica one, valid on replica two
    assert b.post("/signout", data={"csrf": csrf}, headers=cookie).status_code == 303
    assert a.get("/").status_code == 303 and _rows(one) == []


def test_idle_session_is_signed_out_and_deleted(db_url: str, mappings_dir: Path, users: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, users, console_idle_timeout_s=1.0)
    c = client(rt)
    sign_in(c, "ana")
    time.sleep(0.5)
    assert c.get("/").status_code == 200  # activity within the timeout keeps it (last_seen written: interval 0.1 s)
    time.sleep(0.7)
    assert c.get("/").status_code == 200  # 1.2 s after sign-in, 0.7 s idle
    time.sleep(1.2)
    r = c.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert _rows(rt) == []


def test_absolute_end_whatever_the_activity(db_url: str, mappings_dir: Path, users: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, users, console_session_max_s=1.0)
    c = client(rt)
    sign_in(c, "ana")
    for _ in range(3):
        time.sleep(0.4)
        c.get("/")
    assert c.get("/").status_code == 303


def test_last_seen_is_written_at_most_once_a_minute(db_url: str, mappings_dir: Path, users: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, users)  # idle timeout 1800 s: interval 60 s
    c = client(rt)
    sign_in(c, "ana")
    [row] = _rows(rt)
    for _ in range(3):
        assert c.get("/").status_code == 200
    assert _rows(rt)[0].last_seen == row.created_at  # recent: not rewritten
    with Session(rt.engine) as s:
        stored = s.get(ConsoleSession, row.token_sha256)
        assert stored is not None
        stored.last_seen = row.created_at - 61
        s.add(stored)
        s.commit()
    assert c.get("/").status_code == 200
    assert _rows(rt)[0].last_seen >= row.created_at  # a minute old: written again


def test_retention_purges_expired_sessions(db_url: str, mappings_dir: Path, users: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, users, console_idle_timeout_s=0.5)
    c1, c2 = client(rt), client(rt)
    sign_in(c1, "ana")
    sign_in(c2, "otto")
    assert len(_rows(rt)) == 2
    time.sleep(0.7)
    assert rt.purge_console_sessions() == 2 and _rows(rt) == []


def test_end_user_sessions_ends_only_that_users(db_url: str, mappings_dir: Path, users: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, users)
    a, b, o = client(rt), client(rt), client(rt)
    sign_in(a, "ana")
    sign_in(b, "ana")
    sign_in(o, "otto")
    assert sessions.end_user_sessions(rt.engine, "ana") == 2
    assert a.get("/").status_code == 303 and b.get("/").status_code == 303 and o.get("/").status_code == 200


def test_signin_is_throttled_per_address_and_audited(db_url: str, mappings_dir: Path, users: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, users, auth_fail_limit=3, auth_fail_window_s=60.0)
    c = client(rt)
    for _ in range(3):
        assert c.post("/signin", data={"username": "otto", "password": "guess"}).status_code == 401
    r = c.post("/signin", data={"username": "otto", "password": password_of("otto")})  # right, but throttled
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "Too many failed sign-ins" in r.text
    assert c.get("/").status_code == 303
    with unit(rt.engine) as u:
        rows = aq.page(u, limit=10, action="console.signin", actor="otto", since=None, before_id=None)
    assert [x.outcome for x in rows] == ["refused"] * 3  # the throttled attempt is logged, not a row per attempt
    assert rows[0].detail is not None and "throttle_started" in rows[0].detail and rows[1].detail is None


def test_wrong_name_and_wrong_password_answer_alike(db_url: str, mappings_dir: Path, users: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, users)
    c = client(rt)
    answers = []
    for name in ("otto", "nobody-by-this-name"):
        t0 = time.monotonic()
        r = c.post("/signin", data={"username": name, "password": "wrong-Pw-1"})
        answers.append((r.status_code, r.text.replace(name, ""), time.monotonic() - t0 >= ANSWER_FLOOR_S))
    assert answers[0] == answers[1] and answers[0][0] == 401 and answers[0][2]
