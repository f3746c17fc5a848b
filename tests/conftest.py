"""Shared fixtures: temporary databases (SQLite always; PostgreSQL where a server is
given by CARELOOP_TEST_POSTGRES_URL — required under CI), the bundled mappings."""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def hl7_fixture(name: str) -> bytes:
    data = (FIXTURES / "hl7" / name).read_bytes()
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r") + b"\r"


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    """A private copy of the bundled mappings (tests may edit it)."""
    dst = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", dst)
    return dst


@pytest.fixture
def pipeline_mappings(mappings_dir: Path) -> Path:
    """Bundled sources/destinations/settings with the test rules of tests/fixtures/rules and quiet hours off."""
    for f in (mappings_dir / "rules").glob("*.yaml"):
        f.unlink()
    shutil.copy(FIXTURES / "rules" / "pipeline.yaml", mappings_dir / "rules" / "pipeline.yaml")
    p = mappings_dir / "settings.yaml"
    lines = [ln for ln in p.read_text().splitlines() if not ln.startswith("quiet_hours:")]
    p.write_text("\n".join(lines + ["quiet_hours: null", ""]))
    return mappings_dir


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/careloop.db"


def _pg_admin_url() -> str | None:
    return os.environ.get("CARELOOP_TEST_POSTGRES_URL")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    admin = _pg_admin_url()
    if not admin:
        if os.environ.get("CI"):
            pytest.fail("CARELOOP_TEST_POSTGRES_URL is not set under CI: .ci/run must start PostgreSQL")
        pytest.skip("PostgreSQL not available: set CARELOOP_TEST_POSTGRES_URL (bash .ci/run starts one)")
    import psycopg

    name = "careloop_t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/careloop.db"
    return request.getfixturevalue("postgres_url")
