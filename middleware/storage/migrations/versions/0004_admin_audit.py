"""The admin audit: one append-only row per admin action (issue 11).

Revision ID: 0004_admin_audit
Revises: 0003_defaults_and_checks
Create Date: 2026-12-06

Expand-only: a new table with its indexes, and the same database triggers as the disclosure
audit (UPDATE, DELETE and, on PostgreSQL, TRUNCATE refused from any client).
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

from middleware.storage.append_only import drop_statements, recreate_append_only

revision = "0004_admin_audit"
down_revision = "0003_defaults_and_checks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target_kind", sa.String(length=32), nullable=True),
        sa.Column("target_id", sa.String(length=300), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_audit")),
    )
    op.create_index("ix_admin_audit_at", "admin_audit", ["at", "id"], unique=False)
    op.create_index("ix_admin_audit_action", "admin_audit", ["action", "id"], unique=False)
    op.create_index("ix_admin_audit_actor", "admin_audit", ["actor", "id"], unique=False)
    recreate_append_only(op, "admin_audit")


def downgrade() -> None:
    for stmt in drop_statements(op.get_bind().dialect.name, "admin_audit"):
        op.execute(stmt)
    op.drop_index("ix_admin_audit_actor", table_name="admin_audit")
    op.drop_index("ix_admin_audit_action", table_name="admin_audit")
    op.drop_index("ix_admin_audit_at", table_name="admin_audit")
    op.drop_table("admin_audit")
