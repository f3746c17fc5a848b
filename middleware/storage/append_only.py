"""Database triggers that make the disclosure audit append-only on both dialects.

UPDATE and DELETE of a ``disclosure`` row are refused by the database itself (and TRUNCATE on
PostgreSQL), whichever way the statement arrives: ORM, Core or raw DB-API. Nothing in careloop
updates or deletes a disclosure: retention never purges the audit (kept at least six years,
``delivery.audit.KEEP_YEARS``), so there is no exception to allow. Removing rows past a legal
hold would be a deliberate schema change: a migration that drops the triggers.

The triggers belong to the metadata (created with the table by ``create_all``) and to the
migration that introduced them. SQLite's batch mode recreates a table to alter it and the
copy has no triggers: a migration that batch-alters ``disclosure`` must call
:func:`recreate_append_only` afterwards.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import DDL, event
from sqlalchemy.engine import Connection

from .tables import Disclosure

TABLE = "disclosure"
MESSAGE = "disclosure is append-only"
#: Trigger names per dialect (the schema comparison and the tests look for these).
TRIGGERS = {
    "sqlite": ("disclosure_no_update", "disclosure_no_delete"),
    "postgresql": ("disclosure_no_update_delete", "disclosure_no_truncate"),
}
_PG_FUNCTION = "careloop_refuse_audit_change"


def create_statements(dialect: str) -> list[str]:
    """The DDL that installs the triggers on ``dialect`` ("sqlite" or "postgresql")."""
    if dialect == "sqlite":
        return [f"CREATE TRIGGER {name} BEFORE {verb} ON {TABLE} BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
                for name, verb in zip(TRIGGERS["sqlite"], ("UPDATE", "DELETE"))]
    if dialect == "postgresql":
        upd, trunc = TRIGGERS["postgresql"]
        return [
            f"CREATE OR REPLACE FUNCTION {_PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
            f"BEGIN RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'integrity_constraint_violation'; END $fn$",
            f"CREATE TRIGGER {upd} BEFORE UPDATE OR DELETE ON {TABLE} FOR EACH ROW EXECUTE FUNCTION {_PG_FUNCTION}()",
            f"CREATE TRIGGER {trunc} BEFORE TRUNCATE ON {TABLE} FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FUNCTION}()",
        ]
    return []


def drop_statements(dialect: str) -> list[str]:
    """The DDL that removes them (idempotent)."""
    if dialect == "sqlite":
        return [f"DROP TRIGGER IF EXISTS {name}" for name in TRIGGERS["sqlite"]]
    if dialect == "postgresql":
        return [f"DROP TRIGGER IF EXISTS {name} ON {TABLE}" for name in TRIGGERS["postgresql"]] + [
            f"DROP FUNCTION IF EXISTS {_PG_FUNCTION}()"]
    return []


def recreate_append_only(op: Any) -> None:
    """For migrations: (re)install the triggers; call after any batch operation on ``disclosure``."""
    dialect = op.get_bind().dialect.name
    for stmt in drop_statements(dialect) + create_statements(dialect):
        op.execute(stmt)


def installed_triggers(conn: Connection) -> set[str]:
    """Names of the triggers on ``disclosure`` as the database reports them."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (TABLE,))
    else:
        rows = conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal", (TABLE,))
    return {r[0] for r in rows}


def _attach() -> None:
    """``create_all`` creates the triggers with the table (the fast path for a new database)."""
    table = Disclosure.__table__  # type: ignore[attr-defined]
    for dialect in TRIGGERS:
        for stmt in create_statements(dialect):
            ddl = DDL(stmt).execute_if(dialect=dialect)
            if not event.contains(table, "after_create", ddl):
                event.listen(table, "after_create", ddl)


_attach()
