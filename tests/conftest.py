"""Shared fixtures: the database under test, the bundled mappings.

The suite runs on one backend per pass, chosen by ``CARELOOP_TEST_BACKEND`` (``sqlite``, the
default, or ``postgresql``). A test that needs a careloop database takes the ``db_url`` fixture:
a fresh SQLite file, or a fresh PostgreSQL database on the server at ``CARELOOP_TEST_POSTGRES_URL``
(skipped with the reason when that is unset; a failure under CI). ``make test`` runs both passes
at once (tests/run_backends.sh):

* ``sqlite`` pass: every test; ``db_url`` is SQLite. With ``-m 'not postgres'`` (as ``make test``
  runs it) it leaves the PostgreSQL-only tests to the other pass; ``make test`` also runs its
  ``hapi`` tests in a process of their own.
* ``postgresql`` pass: only the tests that use a database (``db_url``, ``postgres_url`` or the
  ``postgres`` mark), except those marked ``sqlite_only`` (file locks, ``VACUUM INTO`` backups,
  the embedded default database, SQLite batch migrations) and the HAPI sandbox tests (one HAPI
  server per machine; they run on SQLite). Tests that touch no database would only repeat the
  SQLite pass and are deselected.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
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


BACKENDS = ("sqlite", "postgresql")
BACKEND = (os.environ.get("CARELOOP_TEST_BACKEND") or "sqlite").strip().lower()


def pytest_configure(config: pytest.Config) -> None:
    if BACKEND not in BACKENDS:
        raise pytest.UsageError(f"CARELOOP_TEST_BACKEND={BACKEND!r}: expected one of {', '.join(BACKENDS)}")


def pytest_report_header(config: pytest.Config) -> str:
    where = "" if BACKEND == "sqlite" else f" ({_pg_admin_url() or 'CARELOOP_TEST_POSTGRES_URL unset'})"
    return f"careloop test backend: {BACKEND}{where} (CARELOOP_TEST_BACKEND)"


def _uses_database(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return ("db_url" in names or "any_db_url" in names or "postgres_url" in names
            or item.get_closest_marker("postgres") is not None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark PostgreSQL-only tests ``postgres``; in the PostgreSQL pass keep only the database tests."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "postgres_url" in names and "db_url" not in names and item.get_closest_marker("postgres") is None:
            item.add_marker(pytest.mark.postgres)
    if BACKEND != "postgresql":
        return
    keep, drop = [], []
    for item in items:
        if (_uses_database(item) and item.get_closest_marker("sqlite_only") is None
                and item.get_closest_marker("hapi") is None):
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _pg_admin_url() -> str | None:
    return os.environ.get("CARELOOP_TEST_POSTGRES_URL")


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty careloop database on the backend under test (``CARELOOP_TEST_BACKEND``)."""
    if BACKEND == "sqlite":
        return f"sqlite:///{tmp_path}/careloop.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def any_db_url(db_url: str) -> str:
    """The former name of ``db_url`` (it used to run a test on both backends in one pass; now each pass
    runs it on its own backend)."""
    return db_url


@pytest.fixture
def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Iterator[Callable[[str], str]]:
    """``make(name) -> url``: more fresh databases on the backend under test, for tests that need
    several (a second replica's database, a copy to compare against); dropped afterwards."""
    made: list[str] = []

    def make(name: str) -> str:
        if BACKEND == "sqlite":
            return f"sqlite:///{tmp_path}/{name}.db"
        url = _create_pg_database()
        made.append(url)
        return url

    try:
        yield make
    finally:
        for url in made:
            _drop_pg_database(url.rsplit("/", 1)[1])


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    admin = _pg_admin_url()
    if not admin:
        if os.environ.get("CI"):
            pytest.fail("CARELOOP_TEST_POSTGRES_URL is not set under CI: .ci/run must start PostgreSQL")
        pytest.skip("PostgreSQL not available: set CARELOOP_TEST_POSTGRES_URL (bash .ci/run starts one)")
    url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(url.rsplit("/", 1)[1])


def _create_pg_database() -> str:
    import psycopg

    admin = _pg_admin_url()
    assert admin
    name = "careloop_t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin.rsplit('/', 1)[0]}/{name}"


def _drop_pg_database(name: str) -> None:
    import psycopg

    admin = _pg_admin_url()
    assert admin
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
