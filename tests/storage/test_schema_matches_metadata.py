"""Running every migration from an empty database gives exactly the schema ``create_all`` gives
(the fast path a new database takes): columns, types, nullability, server defaults, indexes, unique
and CHECK constraints, triggers -- on SQLite and PostgreSQL (``alembic check`` sees none of the last four)."""
from __future__ import annotations

from collections.abc import Callable

import pytest
from alembic import command
from sqlalchemy.engine import Engine

from middleware.storage import schema
from middleware.storage.append_only import TRIGGERS, drop_statements
from middleware.storage.db import make_engine

from storage_helpers import schema_of


@pytest.fixture
def two_empty(db_url: str, fresh_db_url: Callable[[str], str]) -> tuple[Engine, Engine]:
    return make_engine(db_url), make_engine(fresh_db_url("b"))


def test_migrations_from_empty_equal_create_all(two_empty: tuple[Engine, Engine]) -> None:
    migrated, created = two_empty
    with migrated.connect() as conn:
        command.upgrade(schema.alembic_config(conn), "head")
        conn.commit()
    assert schema.upgrade(created).created  # the fast path: create_all + stamp
    assert schema.state(migrated).kind == schema.state(created).kind == "current"
    with migrated.connect() as a, created.connect() as b:
        got, want = schema_of(a), schema_of(b)
    assert got == want
    names = {t[0] for t in want["<triggers>"]}
    assert set(TRIGGERS[migrated.dialect.name]) <= names  # the comparison does see the triggers
    migrated.dispose()
    created.dispose()


def test_comparison_sees_a_missing_trigger(two_empty: tuple[Engine, Engine]) -> None:
    a, b = two_empty
    schema.upgrade(a)
    schema.upgrade(b)
    with b.begin() as conn:
        conn.exec_driver_sql(drop_statements(conn.dialect.name)[1])  # one of the two triggers
    with a.connect() as x, b.connect() as y:
        assert schema_of(x) != schema_of(y)
    a.dispose()
    b.dispose()


def test_downgrade_to_base_and_up_again(db_url: str) -> None:
    engine = make_engine(db_url)
    schema.upgrade(engine)
    with engine.connect() as conn:
        command.downgrade(schema.alembic_config(conn), "base")
        conn.commit()
    assert schema.state(engine).kind == "empty"
    with engine.connect() as conn:
        command.upgrade(schema.alembic_config(conn), "head")
        conn.commit()
    assert schema.state(engine).kind == "current"
