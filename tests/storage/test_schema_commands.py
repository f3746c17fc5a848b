"""``careloop db upgrade | current | history``; ``serve`` and ``worker`` refuse a database at an older or a
newer schema revision (one line naming what to do, no traceback), except the embedded SQLite database,
which upgrades itself after a ``VACUUM INTO`` backup; concurrent upgraders on PostgreSQL serialize."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from middleware.cli import main as cli
from middleware.storage import schema
from middleware.storage.db import make_engine

from storage_helpers import RELEASE, TABLES, all_rows, load_release, load_release_postgres, release_sqlite

REPO = Path(__file__).resolve().parents[2]
FUTURE = "9999_from_a_newer_careloop"


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _careloop(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CARELOOP_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "middleware", *args], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=timeout)


def _stamp_future(url: str) -> None:
    engine = make_engine(url)
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{FUTURE}'")
    engine.dispose()


@pytest.mark.sqlite_only  # the VACUUM INTO backup is SQLite's
def test_db_commands_one_line_each(tmp_path: Path) -> None:
    url = release_sqlite(tmp_path)
    rc, out, _ = _cli("db", "current", "--database-url", url)
    assert rc == 1 and out.count("\n") == 1 and "release 0.1.0" in out and "careloop db upgrade" in out
    rc, out, _ = _cli("db", "upgrade", "--database-url", url)
    head = schema.head_revision()
    assert rc == 0 and out.count("\n") == 1 and out.startswith(f"upgraded from release 0.1.0 (no schema version) to {head}")
    backup = Path(out.rsplit("backup written to ", 1)[1].strip())
    assert backup.exists() and backup.parent == tmp_path
    assert all_rows(make_engine(f"sqlite:///{backup}"))["disclosure"] == all_rows(make_engine(
        f"sqlite:///{RELEASE / 'careloop-sqlite.db'}"))["disclosure"]  # the backup is the database before
    assert _cli("db", "upgrade", "--database-url", url)[1] == f"already at schema revision {head}; nothing to do\n"
    assert _cli("db", "current", "--database-url", url) == (0, f"{head} (head: up to date)\n", "")
    rc, out, _ = _cli("db", "history")
    assert rc == 0 and out.splitlines()[0].startswith("<base> -> 0001_baseline") and f"{head} (head)" in out
    fresh = f"sqlite:///{tmp_path}/new.db"
    assert _cli("db", "upgrade", "--database-url", fresh)[1] == f"created a new database at schema revision {head}\n"


def test_db_upgrade_refuses_a_newer_database(db_url: str) -> None:
    url = db_url
    _stamp_future(url)
    rc, out, err = _cli("db", "upgrade", "--database-url", url)
    assert rc == 2 and out == "" and err.count("\n") == 1 and FUTURE in err and "older than the database" in err
    assert _cli("db", "current", "--database-url", url)[0] == 2


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_older_and_newer(command: str, tmp_path: Path, db_url: str,
                                                 fresh_db_url: Callable[[str], str]) -> None:
    old = db_url
    load_release(old)
    newer = fresh_db_url("newer")
    _stamp_future(newer)
    for url, says in ((old, "run `careloop db upgrade`"), (newer, "this careloop is older than the database")):
        extra = ["--http-port", "0", "--mllp-port", "0"] if command == "serve" else []
        r = _careloop([command, "--database-url", url, "--mappings", str(REPO / "mappings"), *extra], tmp_path)
        assert r.returncode == 2, r.stderr
        assert says in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert schema.state(make_engine(old)).kind == "unversioned"  # refused: not touched


def test_other_commands_refuse_an_old_database(db_url: str) -> None:
    url = db_url
    load_release(url)
    for argv in (["retention", "run"], ["deliveries", "list"], ["audit", "export", "--patient", "x"]):
        rc, out, err = _cli(*argv, "--database-url", url)
        assert rc == 2 and "careloop db upgrade" in err and err.count("\n") == 1, (argv, err)


@pytest.mark.sqlite_only  # the embedded default database
def test_embedded_default_upgrades_itself_after_a_backup(tmp_path: Path) -> None:
    home = tmp_path / ".careloop"
    home.mkdir()
    shutil.copy(RELEASE / "careloop-sqlite.db", home / "careloop.db")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CARELOOP_LOG_LEVEL": "WARNING"}
    env.pop("CARELOOP_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "middleware", "worker", "--mappings", str(REPO / "mappings")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "careloop worker: db=..." once the runtime is built
        assert line.startswith("careloop worker:"), (line, proc.poll())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    backups = list(home.glob("careloop.backup-v0.1.0-*.db"))
    assert len(backups) == 1 and str(backups[0]) in err, err
    assert schema.state(make_engine(f"sqlite:///{home / 'careloop.db'}")).kind == "current"
    assert schema.state(make_engine(f"sqlite:///{backups[0]}")).kind == "unversioned"


@pytest.mark.postgres
def test_two_upgraders_at_once_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    load_release_postgres(postgres_url)
    engine = make_engine(postgres_url)
    before = all_rows(engine)
    # hold the schema lock so both upgraders are surely waiting on it together, then let go
    holder = engine.connect()
    holder.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (schema.PG_LOCK_KEY,))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "middleware", "db", "upgrade", "--database-url", postgres_url],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.monotonic() + 30
    waiting = 0
    while time.monotonic() < deadline and waiting < 2:
        waiting = holder.exec_driver_sql(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").scalar() or 0
        time.sleep(0.05)
    assert waiting == 2 and all(p.poll() is None for p in procs)
    holder.rollback()
    holder.close()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    head = schema.head_revision()
    said = sorted(o[0] for o in outs)
    assert said == [f"already at schema revision {head}; nothing to do\n",
                    f"upgraded from release 0.1.0 (no schema version) to {head}\n"], outs
    assert schema.state(engine).kind == "current"
    after = all_rows(engine)
    assert {t: len(after[t]) for t in TABLES} == {t: len(before[t]) for t in TABLES}
    engine.dispose()


def test_two_upgraders_at_once_on_sqlite(tmp_path: Path) -> None:
    import fcntl

    url = release_sqlite(tmp_path)
    db = tmp_path / "careloop-sqlite.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(db.with_name(db.name + ".upgrade-lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # both upgraders start while the lock is held
        procs = [subprocess.Popen([sys.executable, "-m", "middleware", "db", "upgrade", "--database-url", url],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        time.sleep(3)
        assert all(p.poll() is None for p in procs)  # waiting on the lock
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(o[0].split(";")[0] for o in outs)
    head = schema.head_revision()
    assert said == [f"already at schema revision {head}", f"upgraded from release 0.1.0 (no schema version) to {head}"]
    assert len(list(tmp_path.glob("careloop-sqlite.backup-*.db"))) == 1  # one backup: the second found nothing to do
