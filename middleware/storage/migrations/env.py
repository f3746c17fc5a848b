"""Alembic environment: the SQLModel metadata is the target; SQLite migrations run in batch mode.

careloop runs migrations through :mod:`middleware.storage.schema`, which hands over a connection
it has already locked (``config.attributes["connection"]``). Run by hand (``alembic -x url=...``)
it opens its own from ``sqlalchemy.url`` or ``-x url=``.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from middleware.storage import tables  # noqa: F401  (registers the tables on the metadata)

config = context.config
target_metadata = SQLModel.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    from middleware.storage.db import make_engine

    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("alembic: give the database as -x url=... (or use `careloop db upgrade`)")
    engine = make_engine(url)
    with engine.connect() as conn:
        run_on(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("careloop migrations run online only (`careloop db upgrade`)")
run_online()
