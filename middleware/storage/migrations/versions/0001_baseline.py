"""Baseline: the schema of release 0.1.0 (commit 3f2d320), with the naming convention's names.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-12-06

A database of release 0.1.0 has no ``alembic_version``. This step then *repairs* it instead of
creating anything already there: it adds the nullable columns issue 6 added (``ADDED_COLUMNS``,
applied by only some 0.1.0 code paths), any missing index, and on PostgreSQL renames the primary
and unique constraints to the convention's names (``<table>_pkey`` -> ``pk_<table>``); missing
tables are created. A new, empty database runs it as plain ``create_table``/``create_index``.
Frozen: never edit this file; change the schema in a new revision.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

#: Columns issue 6 added to tables that 0.1.0 databases may have been created without.
ADDED_COLUMNS: dict[str, list[tuple[str, sa.types.TypeEngine[object]]]] = {
    "disclosure": [("outcome", sa.String(16)), ("body_bytes", sa.Integer()), ("request_target", sa.String(200)),
                   ("attempt", sa.Integer())],
    "suppression": [("source", sa.String(64))],
    "delivery": [("locked_by", sa.String(200))],
}
UNIQUE: dict[str, list[tuple[str, list[str]]]] = {
    "delivery": [("uq_delivery_idem", ["idempotency_key"])],
    "trigger": [("uq_trigger_origin", ["origin_key"])],
}
INDEXES: dict[str, list[tuple[str, list[str]]]] = {
    'authorization': [('ix_authorization_patient_key', ['patient_key'])],
    'consent': [('ix_consent_fhir_id', ['fhir_id']), ('ix_consent_patient', ['patient_key', 'status'])],
    'delivery': [('ix_delivery_destination', ['destination']), ('ix_delivery_due', ['status', 'next_attempt_at']), ('ix_delivery_trigger_id', ['trigger_id'])],
    'delivery_alert': [('ix_delivery_alert_destination', ['destination'])],
    'delivery_attempt': [('ix_delivery_attempt_delivery_id', ['delivery_id'])],
    'disclosure': [('ix_disclosure_patient', ['patient_key', 'sent_at'])],
    'event': [('ix_event_created', ['created_at']), ('ix_event_inbound_id', ['inbound_id']), ('ix_event_patient', ['patient_key', 'id']), ('ix_event_resource', ['resource_key', 'id']), ('ix_event_type', ['type'])],
    'inbound_message': [('ix_inbound_dedup', ['dedup_key', 'sha256']), ('ix_inbound_received', ['received_at']), ('ix_inbound_status_id', ['status', 'id'])],
    'patient': [('ix_patient_merged_into', ['merged_into'])],
    'resource_identity': [('ix_resource_identity_resource_key', ['resource_key'])],
    'resource_state': [('ix_resource_patient', ['patient_key', 'resource_type'])],
    'send_intent': [('ix_send_intent_delivery_id', ['delivery_id'])],
    'suppression': [('ix_suppression_patient_key', ['patient_key'])],
    'trigger': [('ix_trigger_cancel', ['cancel_scope', 'status']), ('ix_trigger_dedup', ['dedup_key', 'created_at']), ('ix_trigger_due', ['status', 'due_at']), ('ix_trigger_patient', ['patient_key', 'status']), ('ix_trigger_rule_resource', ['rule_id', 'resource_key', 'status']), ('ix_trigger_updated', ['updated_at'])],
}


def _create_authorization() -> None:
    op.create_table('authorization',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('patient_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('reference', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column('granted_at', sa.Float(), nullable=False),
        sa.Column('revoked_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_authorization'))
    )


def _create_consent() -> None:
    op.create_table('consent',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('patient_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('resource', sa.Text(), nullable=False),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('received_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_consent'))
    )


def _create_delivery() -> None:
    op.create_table('delivery',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('trigger_id', sa.Integer(), nullable=False),
        sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.Float(), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('delivered_at', sa.Float(), nullable=True),
        sa.Column('locked_until', sa.Float(), nullable=True),
        sa.Column('locked_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery')),
        sa.UniqueConstraint('idempotency_key', name='uq_delivery_idem')
    )


def _create_delivery_alert() -> None:
    op.create_table('delivery_alert',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=True),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('resolved_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_alert'))
    )


def _create_delivery_attempt() -> None:
    op.create_table('delivery_attempt',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('duration_ms', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_attempt'))
    )


def _create_disclosure() -> None:
    op.create_table('disclosure',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=False),
        sa.Column('trigger_id', sa.Integer(), nullable=False),
        sa.Column('patient_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('fields', sa.Text(), nullable=False),
        sa.Column('body_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('rule_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('ruleset_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('sent_at', sa.Float(), nullable=False),
        sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column('body_bytes', sa.Integer(), nullable=True),
        sa.Column('request_target', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column('attempt', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_disclosure'))
    )


def _create_event() -> None:
    op.create_table('event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('previous_status', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('resource_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('patient_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column('resource', sa.Text(), nullable=False),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('arrival', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('occurred_at', sa.Float(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('inbound_id', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_event'))
    )


def _create_inbound_message() -> None:
    op.create_table('inbound_message',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('received_at', sa.Float(), nullable=False),
        sa.Column('raw', sa.LargeBinary(), nullable=True),
        sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('dedup_key', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=True),
        sa.Column('control_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column('message_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('ack', sa.LargeBinary(), nullable=True),
        sa.Column('meta', sa.Text(), nullable=True),
        sa.Column('processed_at', sa.Float(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_message'))
    )


def _create_kv() -> None:
    op.create_table('kv',
        sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('value', sa.Text(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_kv'))
    )


def _create_patient() -> None:
    op.create_table('patient',
        sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column('fhir_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('resource', sa.Text(), nullable=False),
        sa.Column('merged_into', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('occurred_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_patient'))
    )


def _create_resource_identity() -> None:
    op.create_table('resource_identity',
        sa.Column('identifier', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column('resource_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.PrimaryKeyConstraint('identifier', name=op.f('pk_resource_identity'))
    )


def _create_resource_state() -> None:
    op.create_table('resource_state',
        sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('patient_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('last_updated', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column('occurred_at', sa.Float(), nullable=False),
        sa.Column('resource', sa.Text(), nullable=False),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('deleted', sa.Boolean(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_resource_state'))
    )


def _create_send_intent() -> None:
    op.create_table('send_intent',
        sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=False),
        sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('started_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('idempotency_key', name=op.f('pk_send_intent'))
    )


def _create_send_ledger() -> None:
    op.create_table('send_ledger',
        sa.Column('idempotency_key', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('sent_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('idempotency_key', name=op.f('pk_send_ledger'))
    )


def _create_suppression() -> None:
    op.create_table('suppression',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('patient_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('revoked_at', sa.Float(), nullable=True),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_suppression'))
    )


def _create_trigger() -> None:
    op.create_table('trigger',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('rule_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('ruleset_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('destinations', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column('patient_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column('resource_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column('origin_key', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column('resource_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('event_id', sa.Integer(), nullable=True),
        sa.Column('due_at', sa.Float(), nullable=False),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('dedup_key', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=True),
        sa.Column('cancel_scope', sqlmodel.sql.sqltypes.AutoString(length=400), nullable=True),
        sa.Column('message_kind', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('explain', sa.Text(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('fired_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_trigger')),
        sa.UniqueConstraint('origin_key', name='uq_trigger_origin')
    )


CREATE = {
    'authorization': _create_authorization,
    'consent': _create_consent,
    'delivery': _create_delivery,
    'delivery_alert': _create_delivery_alert,
    'delivery_attempt': _create_delivery_attempt,
    'disclosure': _create_disclosure,
    'event': _create_event,
    'inbound_message': _create_inbound_message,
    'kv': _create_kv,
    'patient': _create_patient,
    'resource_identity': _create_resource_identity,
    'resource_state': _create_resource_state,
    'send_intent': _create_send_intent,
    'send_ledger': _create_send_ledger,
    'suppression': _create_suppression,
    'trigger': _create_trigger,
}


def _repair(table: str, insp: sa.engine.Inspector) -> None:
    """Bring one existing 0.1.0 table to the baseline (columns, indexes, constraint names)."""
    have_cols = {c["name"] for c in insp.get_columns(table)}
    for name, type_ in ADDED_COLUMNS.get(table, []):
        if name not in have_cols:
            op.add_column(table, sa.Column(name, type_, nullable=True))
    have_idx = {i["name"] for i in insp.get_indexes(table)}
    for name, cols in INDEXES.get(table, []):
        if name not in have_idx:
            op.create_index(name, table, cols, unique=False)
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite does not name primary keys; its unique constraints keep the names they were created with
    pk = insp.get_pk_constraint(table).get("name")
    if pk and pk != f"pk_{table}":
        op.execute(sa.text(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{pk}" TO "pk_{table}"'))
    uniques = {tuple(u["column_names"]): u["name"] for u in insp.get_unique_constraints(table)}
    for name, cols in UNIQUE.get(table, []):
        old = uniques.get(tuple(cols))
        if old is None:
            op.create_unique_constraint(name, table, cols)
        elif old != name:
            op.execute(sa.text(f'ALTER TABLE "{table}" RENAME CONSTRAINT "{old}" TO "{name}"'))


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    existing = set(insp.get_table_names())
    for table, create in CREATE.items():
        if table in existing:
            _repair(table, insp)
            continue
        create()
        for name, cols in INDEXES.get(table, []):
            op.create_index(name, table, cols, unique=False)


def downgrade() -> None:
    for table in reversed(list(CREATE)):
        op.drop_table(table)
