"""``careloop users``: add / passwd / remove / list edit the users file (argon2 hashes), end the
user's console sessions on a password change or removal, and write each command to the admin
audit; ``serve``'s first run creates ``admin`` with its password in a 0600 file, never in a log."""
from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import httpx
import pytest

from middleware.cli import main as cli
from middleware.console.users import load, verify
from middleware.storage.queries import admin_audit as aq
from middleware.storage.sql import unit
from tests.support.console import client, console_runtime, sign_in, write_users
from tests.support.server import REPO, free_port, wait_until


def _cli(monkeypatch: pytest.MonkeyPatch, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _audit(rt, action: str) -> list[aq.AdminAuditRecord]:  # type: ignore[no-untyped-def]
    with unit(rt.engine) as u:
        return aq.page(u, limit=20, action=action, actor=None, since=None, before_id=None)


def test_add_passwd_remove_list_end_sessions_and_are_audited(db_url: str, mappings_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    users = write_users(tmp_path / "users.yaml")
    rt = console_runtime(db_url, mappings_dir, users)
    common = ("--users-file", str(users), "--database", db_url, "--mappings", str(mappings_dir))
    rc, out, err = _cli(monkeypatch, "users", "add", "dana", "--role", "operator", "--permission", "export.lds",
                        "--password-stdin", *common, stdin="Dana-Synthetic-Pw-1\n")
    assert (rc, err) == (0, "") and "dana added" in out
    stored = load(users)["dana"]
    assert stored.roles == ("operator",) and stored.permissions == ("export.lds",)
    assert "Dana-Synthetic-Pw-1" not in users.read_text() and verify(load(users), "dana", "Dana-Synthetic-Pw-1")
    assert stat.S_IMODE(users.stat().st_mode) == 0o600

    c = client(rt)
    sign_in(c, "dana", "Dana-Synthetic-Pw-1")
    # a password from the prompt (typed twice)
    typed = iter(["Dana-New-Synthetic-2", "Dana-New-Synthetic-2"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    rc, out, _ = _cli(monkeypatch, "users", "passwd", "dana", *common)
    assert rc == 0 and "1 console session(s) ended" in out
    assert c.get("/").status_code == 303  # signed out at once
    assert verify(load(users), "dana", "Dana-New-Synthetic-2") and not verify(load(users), "dana", "Dana-Synthetic-Pw-1")

    sign_in(c, "dana", "Dana-New-Synthetic-2")
    rc, out, _ = _cli(monkeypatch, "users", "remove", "dana", *common)
    assert rc == 0 and "dana removed; 1 console session(s) ended" in out
    assert c.get("/").status_code == 303 and "dana" not in load(users)

    rc, out, _ = _cli(monkeypatch, "users", "list", *common)
    assert rc == 0 and out.splitlines()[0].split() == ["ana", "analyst"] and "dana" not in out
    for action in ("users.add", "users.passwd", "users.remove", "users.list"):
        [row] = _audit(rt, action)
        assert row.channel == "cli" and row.target_id == ("dana" if action != "users.list" else None)
        assert "Dana" not in (row.detail or "")


def test_mistakes_are_one_line_and_change_nothing(db_url: str, mappings_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    users = write_users(tmp_path / "users.yaml")
    console_runtime(db_url, mappings_dir, users)
    before = users.read_bytes()
    common = ("--users-file", str(users), "--database", db_url)
    cases = [
        (("users", "add", "x", "--role", "wizard", "--password-stdin"), "unknown role or permission 'wizard'"),
        (("users", "add", "ana", "--role", "analyst", "--password-stdin"), "user 'ana' exists"),
        (("users", "add", "newbie", "--role", "analyst", "--password-stdin"), "at least 12 characters"),
        (("users", "passwd", "ghost", "--password-stdin"), "no user 'ghost'"),
        (("users", "remove", "ghost"), "no user 'ghost'"),
    ]
    for argv, said in cases:
        rc, _, err = _cli(monkeypatch, *argv, *common, stdin="short\n")
        assert rc == 2 and said in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert users.read_bytes() == before


def test_first_run_creates_admin_with_password_in_a_private_file(tmp_path: Path, mappings_dir: Path) -> None:
    http_port, mllp_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CARELOOP_LOG_LEVEL": "INFO"}
    log = tmp_path / "serve.log"
    with log.open("w") as fh:
        argv = [sys.executable, "-m", "middleware", "serve", "--http-port", str(http_port), "--mllp-port", str(mllp_port),
                "--mappings", str(mappings_dir)]
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{http_port}"

        def up() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 60, what="careloop serve")
        pw_file = tmp_path / ".careloop" / "console-admin-password"
        password = pw_file.read_text().strip()
        assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600 and len(password) >= 20
        r = httpx.post(url + "/signin", data={"username": "admin", "password": password})
        assert r.status_code == 303 and r.headers["location"] == "/"
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text()
    said = [line for line in text.splitlines() if "console-admin-password" in line]
    assert said == [f"careloop: console user 'admin' created; its password is in {Path('.careloop/console-admin-password')} "
                    "(readable by you only)"]
    assert password not in text
    users = load(tmp_path / ".careloop" / "console-users.yaml")
    assert list(users) == ["admin"] and users["admin"].roles == ("admin",)
