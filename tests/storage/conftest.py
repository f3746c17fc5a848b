"""Storage test fixtures: a second fresh PostgreSQL database (to compare against the first). The
database under test is the suite-wide ``db_url`` (tests/conftest.py, one backend per pass)."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


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
