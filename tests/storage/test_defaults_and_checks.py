"""Server defaults and status CHECKs (revision 0003) on SQLite and PostgreSQL, through raw DB-API:
an INSERT that leaves out status/attempts gets the model's values; an unknown status is refused.
The schema comparison sees both (a database one revision behind compares unequal)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command

from middleware.storage import outcome_stops
from middleware.storage import schema
from middleware.storage.db import make_engine
from middleware.storage.statuses import DeliveryStatus, TriggerStatus

from storage_helpers import raw_connection, release_sqlite, schema_of

TRIGGER = ("INSERT INTO \"trigger\" (rule_id, ruleset_version, name, purpose, destinations, origin_key, due_at, payload, "
           "created_at, updated_at{extra}) VALUES ('r', 'v', 'n', 'care', 'hook', '{origin}', 1.0, '{{}}', 1.0, 1.0{value})")




def test_defaults_fill_what_an_insert_leaves_out_and_checks_refuse_unknown_statuses(db_url: str) -> None:
    engine = make_engine(db_url)
    schema.upgrade(engine)
    engine.dispose()
    conn = raw_connection(db_url)
    try:
        cur = conn.cursor()
        cur.execute(TRIGGER.format(extra="", value="", origin="o1"))
        cur.execute("INSERT INTO delivery (trigger_id, destination, idempotency_key, next_attempt_at, created_at, "
                    "updated_at) VALUES (1, 'hook', 'k1', 1.0, 1.0, 1.0)")
        cur.execute("INSERT INTO inbound_message (source, channel, received_at, sha256) VALUES ('s', 'mllp', 1.0, 'x')")
        conn.commit()
        cur.execute("SELECT status FROM \"trigger\"")
        assert cur.fetchone() == (TriggerStatus.PENDING,)
        cur.execute("SELECT status, attempts FROM delivery")
        assert cur.fetchone() == (DeliveryStatus.PENDING, 0)
        cur.execute("SELECT status, attempts FROM inbound_message")
        assert cur.fetchone() == ("received", 0)
        for stmt in (TRIGGER.format(extra=", status", value=", 'launched'", origin="o2"),
                     "UPDATE delivery SET status = 'sent'"):
            with pytest.raises(Exception, match="(?i)check"):
                cur.execute(stmt)
            conn.rollback()
    finally:
        conn.close()


def test_comparison_sees_defaults_and_checks(db_url: str, fresh_db_url: Callable[[str], str]) -> None:
    behind, head = make_engine(db_url), make_engine(fresh_db_url("b"))
    with behind.connect() as conn:
        command.upgrade(schema.alembic_config(conn), "0002_append_only_disclosure")
        conn.commit()
    schema.upgrade(head)
    with behind.connect() as a, head.connect() as b:
        old, new = schema_of(a), schema_of(b)
    assert old["trigger"]["checks"] == [] and new["trigger"]["checks"][0][0] == "ck_trigger_status"
    new_status = next(c for c in new["trigger"]["columns"] if c[0] == "status")
    assert new_status[:3] == ("status", "VARCHAR(16)", False) and new_status[3].startswith("'pending'")
    assert ("status", "VARCHAR(16)", False, None) in old["trigger"]["columns"]
    behind.dispose()
    head.dispose()


@pytest.mark.sqlite_only  # SQLite batch migrations drop triggers with the recreated tables
def test_release_rows_pass_the_new_checks_and_keep_the_triggers(tmp_path: Path) -> None:
    engine = make_engine(release_sqlite(tmp_path))
    schema.upgrade(engine)  # batch-recreates disclosure among others
    with engine.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    # the append-only guards, and the triggers that keep outcome.stopped (storage/outcome_stops.py, revision 0010)
    assert names == {"disclosure_no_update", "disclosure_no_delete", "admin_audit_no_update", "admin_audit_no_delete",
                     *outcome_stops.NAMES["sqlite"]}
    engine.dispose()
