"""The schema check at start-up reads the newest revision from the migration files (no Alembic
import: ``schema.head_from_files``); it must agree with Alembic, and any database not at that
revision still goes through Alembic's checks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from middleware.storage import schema
from middleware.storage.db import make_engine

REPO = Path(__file__).resolve().parents[2]


def test_the_files_head_is_alembics_head() -> None:
    assert schema.head_from_files() is not None
    assert schema.head_from_files() == schema.head_revision()


def test_a_current_database_is_checked_without_importing_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    schema.open_database(url).dispose()  # created at the newest revision
    code = ("import sys; from middleware.storage.schema import open_database; "
            f"open_database({url!r}, existing=True).dispose(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout


def test_a_database_at_another_revision_still_gets_alembics_verdict(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert schema.state(engine).kind == "empty"
        schema.upgrade(engine)
        assert schema.state(engine).kind == "current"
        with engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = '0010_outcome_breakdowns'"))
        assert schema.state(engine).kind == "behind"
        with engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
        assert schema.state(engine).kind == "ahead"
    finally:
        engine.dispose()
