"""Helpers for the storage tests: the release-0.1.0 fixtures, a reflected schema, every row."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / "tests" / "fixtures" / "release-0.1.0"
TABLES = ["authorization", "consent", "delivery", "delivery_alert", "delivery_attempt", "disclosure", "event",
          "inbound_message", "kv", "patient", "resource_identity", "resource_state", "send_intent", "send_ledger",
          "suppression", "trigger"]


def release_sqlite(tmp: Path, name: str = "careloop-sqlite.db") -> str:
    """A private copy of a release-0.1.0 SQLite fixture; its URL."""
    dst = tmp / name
    shutil.copy(RELEASE / name, dst)
    return f"sqlite:///{dst}"


def load_release(url: str) -> None:
    """Make the (new, empty) database at ``url`` a release-0.1.0 database of its backend."""
    if url.startswith("sqlite"):
        shutil.copy(RELEASE / "careloop-sqlite.db", url.split("///", 1)[1])
    else:
        load_release_postgres(url)


def load_release_postgres(url: str) -> None:
    """Restore the release-0.1.0 ``pg_dump`` into the (empty) database at ``url``."""
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(RELEASE / "careloop-postgres.sql")],
                   check=True, capture_output=True, timeout=60)


def _norm(sql: Any) -> str | None:
    return None if sql is None else re.sub(r"\s+", " ", str(sql)).strip()


def schema_of(conn: Connection) -> dict[str, Any]:
    """Everything the schema comparison looks at: per table its columns (name, type, nullability,
    server default), primary key, indexes, unique and CHECK constraints; and the triggers."""
    insp = inspect(conn)
    sqlite = conn.dialect.name == "sqlite"
    out: dict[str, Any] = {}
    for t in sorted(insp.get_table_names()):
        if t == "alembic_version":
            continue
        pk = insp.get_pk_constraint(t)
        out[t] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"], _norm(c.get("default"))) for c in insp.get_columns(t)],
            # SQLite has no use for a primary key's name (no statement can refer to it): columns only there
            "pk": (None if sqlite else pk.get("name"), tuple(pk["constrained_columns"])),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes(t)),
            "unique": sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(t)),
            "checks": sorted((c["name"], _norm(c["sqltext"])) for c in insp.get_check_constraints(t)),
        }
    if sqlite:
        rows = conn.exec_driver_sql("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'").all()
    else:
        rows = conn.exec_driver_sql(
            "SELECT t.tgname, c.relname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal").all()
        rows += conn.exec_driver_sql(
            "SELECT p.proname, 'function', pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public'").all()
    out["<triggers>"] = sorted((r[0], r[1], _norm(r[2])) for r in rows)
    return out


def all_rows(engine: Engine, tables: list[str] = TABLES) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, in primary-key order, as dicts."""
    out = {}
    with engine.connect() as conn:
        insp = inspect(conn)
        for t in tables:
            pk = insp.get_pk_constraint(t)["constrained_columns"]
            order = ", ".join(f'"{c}"' for c in pk)
            out[t] = [dict(r._mapping) for r in conn.execute(text(f'SELECT * FROM "{t}" ORDER BY {order}'))]
    return out


def raw_connection(url: str) -> Any:
    """A plain DB-API connection (sqlite3 or psycopg) to ``url``, bypassing SQLAlchemy."""
    if url.startswith("sqlite"):
        import sqlite3

        return sqlite3.connect(url.split("///", 1)[1])
    import psycopg

    return psycopg.connect(url)
