"""careloop's stable internal patient id; a CHECK on ``inbound_message.status``.

Revision ID: 0005_patient_id
Revises: 0004_admin_audit
Create Date: 2026-12-06

Expand-only. New tables ``patient_identity`` (one row per internal id; ``merged_into`` for a
merged-away one) and ``patient_identifier`` (patient key -> current internal id); a nullable
``patient_id`` with an index on ``event`` and ``trigger``. Every patient key already stored
(patients and their recorded merges, resources, events, triggers, disclosures, consents,
opt-outs, authorizations) gets an id: keys joined by ``patient.merged_into`` (followed to the
end of the chain) share the survivor's; then every event and trigger row with a patient key is
stamped. Ids are random (``pt_`` + 128 bits, base32), never derived from an identifier.

``inbound_message.status`` gets the CHECK of ``statuses.InboundStatus`` (frozen here as a
literal); a database holding a status outside it is refused with the values found, before any
change. SQLite recreates ``inbound_message`` for it (batch mode; that table has no triggers).
"""
from __future__ import annotations

import base64
import secrets
import time

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

from middleware.storage.schema import SchemaError

revision = "0005_patient_id"
down_revision = "0004_admin_audit"
branch_labels = None
depends_on = None

INBOUND_STATUSES = ("received", "processed", "ignored", "failed", "rejected", "duplicate")
INBOUND_CHECK = "status IN ('received', 'processed', 'ignored', 'failed', 'rejected', 'duplicate')"
#: tables whose rows name a patient key (all of them are mapped to an id)
KEYED = ("resource_state", "event", "trigger", "disclosure", "consent", "suppression", "authorization")
#: tables stamped with the id
STAMPED = {"event": "ix_event_patient_id", "trigger": "ix_trigger_patient_id"}


def _new_id() -> str:
    return "pt_" + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def _check_inbound(conn: sa.engine.Connection) -> None:
    found = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT status FROM inbound_message"))}
    unknown = sorted(str(s) for s in found - set(INBOUND_STATUSES))
    if unknown:
        raise SchemaError(f"revision 0005: inbound_message holds statuses careloop does not know ({', '.join(unknown)}): "
                           "fix or remove those rows, then upgrade again")


def _assign_ids(conn: sa.engine.Connection) -> None:
    merged = {str(k): str(m) for k, m in conn.execute(
        sa.text("SELECT key, merged_into FROM patient WHERE merged_into IS NOT NULL AND merged_into <> ''"))}
    keys: set[str] = {str(k) for (k,) in conn.execute(sa.text("SELECT key FROM patient"))}
    keys.update(merged.values())
    for table in KEYED:
        keys.update(str(k) for (k,) in conn.execute(
            sa.text(f'SELECT DISTINCT patient_key FROM "{table}" WHERE patient_key IS NOT NULL')))

    def survivor(key: str) -> str:
        seen = {key}
        while key in merged and merged[key] not in seen:
            key = merged[key]
            seen.add(key)
        return key

    now = time.time()
    ids: dict[str, str] = {}
    identifiers = []
    for key in sorted(keys):
        root = survivor(key)
        if root not in ids:
            ids[root] = _new_id()
        identifiers.append({"k": key, "p": ids[root], "t": now})
    if not identifiers:
        return
    conn.execute(sa.text("INSERT INTO patient_identity (id, merged_into, created_at, merged_at) VALUES (:p, NULL, :t, NULL)"),
                 [{"p": p, "t": now} for p in ids.values()])
    conn.execute(sa.text("INSERT INTO patient_identifier (patient_key, patient_id, created_at) VALUES (:k, :p, :t)"),
                 identifiers)
    for table in STAMPED:
        conn.execute(sa.text(
            f'UPDATE "{table}" SET patient_id = (SELECT i.patient_id FROM patient_identifier i '
            f'WHERE i.patient_key = "{table}".patient_key) WHERE patient_key IS NOT NULL'))


def upgrade() -> None:
    conn = op.get_bind()
    _check_inbound(conn)
    op.create_table(
        "patient_identity",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("merged_into", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("merged_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_identity")),
    )
    op.create_index("ix_patient_identity_merged_into", "patient_identity", ["merged_into"], unique=False)
    op.create_table(
        "patient_identifier",
        sa.Column("patient_key", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("patient_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("patient_key", name=op.f("pk_patient_identifier")),
    )
    op.create_index("ix_patient_identifier_patient_id", "patient_identifier", ["patient_id"], unique=False)
    for table, index in STAMPED.items():
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("patient_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        op.create_index(index, table, ["patient_id", "id"], unique=False)
    with op.batch_alter_table("inbound_message") as batch:
        batch.create_check_constraint(op.f("ck_inbound_message_status"), INBOUND_CHECK)
    _assign_ids(conn)


def downgrade() -> None:
    with op.batch_alter_table("inbound_message") as batch:
        batch.drop_constraint(op.f("ck_inbound_message_status"), type_="check")
    for table, index in STAMPED.items():
        op.drop_index(index, table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("patient_id")
    op.drop_index("ix_patient_identifier_patient_id", table_name="patient_identifier")
    op.drop_table("patient_identifier")
    op.drop_index("ix_patient_identity_merged_into", table_name="patient_identity")
    op.drop_table("patient_identity")
