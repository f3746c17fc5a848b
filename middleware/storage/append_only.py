"""Database triggers that make the audits (disclosure, admin_audit) append-only on both dialects.

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
from sqlalchemy.orm import ORMExecuteState, Session as OrmSession
from sqlmodel import SQLModel

from .tables import AdminAudit, Disclosure

TABLE = "disclosure"
MESSAGE = "disclosure is append-only"
#: Trigger names per table and dialect (the schema comparison and the tests look for these).
TABLE_TRIGGERS: dict[str, dict[str, tuple[str, str]]] = {
    "disclosure": {
        "sqlite": ("disclosure_no_update", "disclosure_no_delete"),
        "postgresql": ("disclosure_no_update_delete", "disclosure_no_truncate"),
    },
    "admin_audit": {
        "sqlite": ("admin_audit_no_update", "admin_audit_no_delete"),
        "postgresql": ("admin_audit_no_update_delete", "admin_audit_no_truncate"),
    },
}
#: the disclosure audit's triggers (kept for callers that name one table)
TRIGGERS = TABLE_TRIGGERS[TABLE]
_PG_FUNCTIONS = {"disclosure": "careloop_refuse_audit_change", "admin_audit": "careloop_refuse_admin_audit_change"}


def create_statements(dialect: str, table: str = TABLE) -> list[str]:
    """The DDL that installs ``table``'s triggers on ``dialect`` ("sqlite" or "postgresql")."""
    names = TABLE_TRIGGERS[table]
    message = f"{table} is append-only"
    if dialect == "sqlite":
        return [f"CREATE TRIGGER {name} BEFORE {verb} ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END"
                for name, verb in zip(names["sqlite"], ("UPDATE", "DELETE"))]
    if dialect == "postgresql":
        upd, trunc = names["postgresql"]
        fn = _PG_FUNCTIONS[table]
        return [
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
            f"BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = 'integrity_constraint_violation'; END $fn$",
            f"CREATE TRIGGER {upd} BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {fn}()",
            f"CREATE TRIGGER {trunc} BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
        ]
    return []


def drop_statements(dialect: str, table: str = TABLE) -> list[str]:
    """The DDL that removes them (idempotent)."""
    names = TABLE_TRIGGERS[table]
    if dialect == "sqlite":
        return [f"DROP TRIGGER IF EXISTS {name}" for name in names["sqlite"]]
    if dialect == "postgresql":
        return [f"DROP TRIGGER IF EXISTS {name} ON {table}" for name in names["postgresql"]] + [
            f"DROP FUNCTION IF EXISTS {_PG_FUNCTIONS[table]}()"]
    return []


def recreate_append_only(op: Any, table: str = TABLE) -> None:
    """For migrations: (re)install ``table``'s triggers; call after any batch operation on it."""
    dialect = op.get_bind().dialect.name
    for stmt in drop_statements(dialect, table) + create_statements(dialect, table):
        op.execute(stmt)


def installed_triggers(conn: Connection, table: str = TABLE) -> set[str]:
    """Names of the triggers on ``table`` as the database reports them."""
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,))
    else:
        rows = conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal", (table,))
    return {r[0] for r in rows}


def _attach() -> None:
    """``create_all`` creates the triggers with the tables (the fast path for a new database)."""
    for model in (Disclosure, AdminAudit):
        table = SQLModel.metadata.tables[model.__tablename__]
        for dialect in TABLE_TRIGGERS[table.name]:
            for stmt in create_statements(dialect, table.name):
                ddl = DDL(stmt).execute_if(dialect=dialect)  # type: ignore[no-untyped-call]  # DDL.__init__ is unannotated in sqlalchemy
                if not event.contains(table, "after_create", ddl):
                    event.listen(table, "after_create", ddl)


_attach()


# -- the same rule in the ORM: refuse before the statement reaches the database --------------


class AppendOnlyError(RuntimeError):
    """Disclosures are append-only: they are never updated or deleted."""


def _refuse_disclosure(*_args: Any) -> None:
    raise AppendOnlyError(AppendOnlyError.__doc__)


def _refuse_admin_audit(*_args: Any) -> None:
    raise AppendOnlyError("the admin audit is append-only: rows are never updated or deleted")


def _refuse_admin_audit_bulk(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and state.bind_mapper is not None \
            and state.bind_mapper.class_ is AdminAudit:
        _refuse_admin_audit()


def guard_append_only() -> None:
    """Install (once) ORM hooks that refuse to update or delete a Disclosure."""
    for name in ("before_update", "before_delete"):
        if not event.contains(Disclosure, name, _refuse_disclosure):
            event.listen(Disclosure, name, _refuse_disclosure)


def guard_admin_audit() -> None:
    """Install (once) ORM hooks that refuse to update or delete admin-audit rows, one by one or
    with bulk ORM ``UPDATE``/``DELETE`` statements."""
    for name in ("before_update", "before_delete"):
        if not event.contains(AdminAudit, name, _refuse_admin_audit):
            event.listen(AdminAudit, name, _refuse_admin_audit)
    if not event.contains(OrmSession, "do_orm_execute", _refuse_admin_audit_bulk):
        event.listen(OrmSession, "do_orm_execute", _refuse_admin_audit_bulk)
