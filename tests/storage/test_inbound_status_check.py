"""The CHECK on ``inbound_message.status`` (revision 0005) on SQLite and PostgreSQL, through raw DB-API:
every :class:`InboundStatus` is stored, anything else is refused on INSERT and UPDATE; an upgrade of a
database holding a status careloop does not know stops before changing anything, naming the value."""
from __future__ import annotations

import pytest
from alembic import command

from middleware.storage import schema
from middleware.storage.db import make_engine
from middleware.storage.statuses import InboundStatus

from storage_helpers import raw_connection

INSERT = "INSERT INTO inbound_message (source, channel, received_at, sha256, status) VALUES ('s', 'mllp', 1.0, '{sha}', '{status}')"


def test_inbound_status_check_refuses_unknown_statuses(db_url: str) -> None:
    engine = make_engine(db_url)
    schema.upgrade(engine)
    engine.dispose()
    conn = raw_connection(db_url)
    try:
        cur = conn.cursor()
        for i, status in enumerate(InboundStatus):
            cur.execute(INSERT.format(sha=f"ok{i}", status=status.value))
        conn.commit()
        cur.execute("SELECT count(*) FROM inbound_message")
        assert cur.fetchone() == (len(InboundStatus),)
        for stmt in (INSERT.format(sha="bad", status="processing"), "UPDATE inbound_message SET status = 'done'",
                     INSERT.format(sha="bad", status="RECEIVED")):
            with pytest.raises(Exception, match="(?i)check"):
                cur.execute(stmt)
            conn.rollback()
        cur.execute("SELECT DISTINCT status FROM inbound_message ORDER BY status")
        assert [r[0] for r in cur.fetchall()] == sorted(s.value for s in InboundStatus)
    finally:
        conn.close()


def test_upgrade_stops_on_a_status_careloop_does_not_know(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        command.upgrade(schema.alembic_config(conn), "0004_admin_audit")
        conn.commit()
    raw = raw_connection(db_url)
    raw.cursor().execute(INSERT.format(sha="x", status="half-done"))
    raw.commit()
    raw.close()
    with pytest.raises(schema.SchemaError, match="half-done"):
        schema.upgrade(engine)
    assert schema.state(engine).revision == "0004_admin_audit"  # nothing changed
    engine.dispose()
