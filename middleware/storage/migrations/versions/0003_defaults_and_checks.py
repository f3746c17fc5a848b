"""Server defaults for the columns with a model default; CHECKs on trigger, delivery and disclosure statuses.

Revision ID: 0003_defaults_and_checks
Revises: 0002_append_only_disclosure
Create Date: 2026-12-06

Server defaults: a statement that leaves out ``status``, ``attempts``, a time or a flag (raw
INSERTs, named queries) gets the value the model would have given. CHECKs: ``trigger.status``,
``delivery.status`` and ``disclosure.outcome`` hold only the values of the ``StrEnum``s in
``middleware/storage/statuses.py`` (frozen here as literals). Expand-only: old code writes
nothing these refuse.

SQLite recreates each altered table (batch mode); ``disclosure``'s append-only triggers are put
back after its batch.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

from middleware.storage.append_only import recreate_append_only

revision = "0003_defaults_and_checks"
down_revision = "0002_append_only_disclosure"
branch_labels = None
depends_on = None

ZERO = sa.text("0")
#: table -> [(column, type, server default)]
DEFAULTS: dict[str, list[tuple[str, sa.types.TypeEngine[object], object]]] = {
    "inbound_message": [("status", sa.String(16), "received"), ("attempts", sa.Integer(), ZERO)],
    "patient": [("updated_at", sa.Float(), ZERO), ("occurred_at", sa.Float(), ZERO)],
    "resource_state": [("occurred_at", sa.Float(), ZERO), ("deleted", sa.Boolean(), sa.false()),
                       ("updated_at", sa.Float(), ZERO)],
    "trigger": [("status", sa.String(16), "pending")],
    "delivery": [("status", sa.String(16), "pending"), ("attempts", sa.Integer(), ZERO)],
    "delivery_attempt": [("duration_ms", sa.Float(), ZERO)],
    "consent": [("source", sa.String(64), "api")],
    "authorization": [("purpose", sa.String(32), "marketing")],
    "kv": [("updated_at", sa.Float(), ZERO)],
}
#: table -> (constraint name, SQL)
CHECKS: dict[str, tuple[str, str]] = {
    "trigger": ("ck_trigger_status", "status IN ('pending', 'fired', 'cancelled', 'skipped', 'suppressed')"),
    "delivery": ("ck_delivery_status",
                 "status IN ('pending', 'sending', 'delivered', 'dead', 'suppressed', 'unconfirmed')"),
    "disclosure": ("ck_disclosure_outcome", "outcome IN ('delivered', 'unconfirmed')"),
}


def upgrade() -> None:
    for table in list(DEFAULTS) + [t for t in CHECKS if t not in DEFAULTS]:
        with op.batch_alter_table(table) as batch:
            for column, type_, default in DEFAULTS.get(table, []):
                batch.alter_column(column, existing_type=type_, existing_nullable=False, server_default=default)
            if table in CHECKS:
                name, sql = CHECKS[table]
                batch.create_check_constraint(op.f(name), sql)
        if table == "disclosure":
            recreate_append_only(op)


def downgrade() -> None:
    for table in list(DEFAULTS) + [t for t in CHECKS if t not in DEFAULTS]:
        with op.batch_alter_table(table) as batch:
            if table in CHECKS:
                batch.drop_constraint(op.f(CHECKS[table][0]), type_="check")
            for column, type_, _ in DEFAULTS.get(table, []):
                batch.alter_column(column, existing_type=type_, existing_nullable=False, server_default=None)
        if table == "disclosure":
            recreate_append_only(op)
