"""The console (issue 15): per-minute rollups for the overview's sparklines, and the indexes of
the message browser's filters (each an index range read in id order, for keyset pages).

Revision ID: 0009_console_rollups
Revises: 0008_console_sessions
Create Date: 2026-12-06

Expand-only: one new table and two new indexes on ``inbound_message``.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_console_rollups"
down_revision = "0008_console_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_rollup",
        sa.Column("series", sa.String(length=16), nullable=False),
        sa.Column("minute", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("n", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("series", "minute", "key", name=op.f("pk_console_rollup")),
    )
    op.create_index("ix_inbound_source_type_id", "inbound_message", ["source", "message_type", "id"])
    op.create_index("ix_inbound_control_id", "inbound_message", ["control_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_inbound_control_id", table_name="inbound_message")
    op.drop_index("ix_inbound_source_type_id", table_name="inbound_message")
    op.drop_table("console_rollup")
