"""Storage test fixtures: a fresh database on each backend, and a second fresh PostgreSQL database
(to compare against the first)."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest



@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/a.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def other_postgres_url(postgres_url: str) -> Iterator[str]:
    """One more fresh PostgreSQL database on the same server, dropped afterwards."""
    import psycopg

    admin = os.environ["CARELOOP_TEST_POSTGRES_URL"]
    name = "careloop_t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
