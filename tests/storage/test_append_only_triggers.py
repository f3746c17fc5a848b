"""The disclosure audit is append-only in the database: UPDATE and DELETE through raw DB-API are
refused on SQLite and PostgreSQL (and TRUNCATE on PostgreSQL); INSERT and SELECT work. SQLite's
batch mode (table recreation) drops triggers: ``recreate_append_only`` puts them back."""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from middleware.storage import schema
from middleware.storage.append_only import TRIGGERS, installed_triggers, recreate_append_only
from middleware.storage.db import make_engine

from storage_helpers import raw_connection

INSERT = ("INSERT INTO disclosure (delivery_id, trigger_id, patient_key, destination, fields, body_sha256, purpose, "
          "rule_id, ruleset_version, sent_at) VALUES (1, 1, 'default|MRN1', 'hook', '[]', 'ab', 'care', 'r1', 'v1', 1.0)")




def test_raw_update_and_delete_are_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    schema.upgrade(engine)
    engine.dispose()
    conn = raw_connection(db_url)
    try:
        cur = conn.cursor()
        cur.execute(INSERT)
        conn.commit()
        statements = ["UPDATE disclosure SET destination = 'elsewhere'", "DELETE FROM disclosure"]
        if not db_url.startswith("sqlite"):
            statements.append("TRUNCATE disclosure")
        for stmt in statements:
            with pytest.raises(Exception, match="append-only"):
                cur.execute(stmt)
            conn.rollback()
        cur = conn.cursor()
        cur.execute(INSERT)  # appending still works
        conn.commit()
        cur.execute("SELECT count(*), min(destination), max(destination) FROM disclosure")
        assert cur.fetchone() == (2, "hook", "hook")
    finally:
        conn.close()


@pytest.mark.sqlite_only  # SQLite batch mode (table recreation) is what drops the triggers
def test_batch_recreation_needs_the_helper(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/a.db")
    schema.upgrade(engine)
    with engine.begin() as conn:
        assert installed_triggers(conn) == set(TRIGGERS["sqlite"])
        op = Operations(MigrationContext.configure(conn))
        with op.batch_alter_table("disclosure", recreate="always") as batch:  # what a later migration may do
            batch.add_column(sa.Column("note", sa.Text(), nullable=True))
        assert installed_triggers(conn) == set()  # SQLite dropped them with the old table
        recreate_append_only(op)
        assert installed_triggers(conn) == set(TRIGGERS["sqlite"])
    with engine.begin() as conn:
        conn.exec_driver_sql(INSERT)
    with engine.begin() as conn, pytest.raises(sa.exc.DatabaseError, match="append-only"):
        conn.exec_driver_sql("DELETE FROM disclosure")
    engine.dispose()


ADMIN_INSERT = ("INSERT INTO admin_audit (at, actor, channel, action, outcome) "
                "VALUES (1.0, 'ops', 'cli', 'deliveries.replay', 'ok')")


def test_admin_audit_raw_update_and_delete_are_refused(db_url: str) -> None:
    """The admin audit (issue 11) is append-only in the database too, from any client."""
    engine = make_engine(db_url)
    schema.upgrade(engine)
    with engine.connect() as c:
        from middleware.storage.append_only import TABLE_TRIGGERS

        assert installed_triggers(c, "admin_audit") == set(TABLE_TRIGGERS["admin_audit"][c.dialect.name])
    engine.dispose()
    conn = raw_connection(db_url)
    try:
        cur = conn.cursor()
        cur.execute(ADMIN_INSERT)
        conn.commit()
        statements = ["UPDATE admin_audit SET actor = 'someone-else'", "DELETE FROM admin_audit"]
        if not db_url.startswith("sqlite"):
            statements.append("TRUNCATE admin_audit")
        for stmt in statements:
            with pytest.raises(Exception, match="append-only"):
                cur.execute(stmt)
            conn.rollback()
        cur = conn.cursor()
        cur.execute("SELECT count(*), min(actor) FROM admin_audit")
        assert cur.fetchone() == (1, "ops")
    finally:
        conn.close()
