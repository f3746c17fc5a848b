"""Destination exits and vendor confirmations (issue 17).

Revision ID: 0011_destination_exits
Revises: 0010_outcome_breakdowns
Create Date: 2026-12-06

Expand-only: ``delivery`` gains ``kind`` (``entry`` for every existing row, by its server
default), ``confirmation``, ``vendor_ref``, ``confirm_by`` and ``confirmed_at`` (NULL for every
existing row: their answers were final), and an index for the confirmation poller. Plain
``ALTER TABLE ... ADD COLUMN`` on both dialects: no SQLite table rebuild, so the database triggers on
``delivery`` (storage/outcome_stops.py) stay in place.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_destination_exits"
down_revision = "0010_outcome_breakdowns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("delivery", sa.Column("kind", sa.String(length=8), server_default="entry", nullable=False))
    op.add_column("delivery", sa.Column("confirmation", sa.String(length=16), nullable=True))
    op.add_column("delivery", sa.Column("vendor_ref", sa.String(length=200), nullable=True))
    op.add_column("delivery", sa.Column("confirm_by", sa.Float(), nullable=True))
    op.add_column("delivery", sa.Column("confirmed_at", sa.Float(), nullable=True))
    op.create_index("ix_delivery_confirm", "delivery", ["confirmation", "next_attempt_at"])


def downgrade() -> None:
    from middleware.storage import outcome_stops

    op.drop_index("ix_delivery_confirm", table_name="delivery")
    with op.batch_alter_table("delivery") as b:  # SQLite rebuilds the table: its triggers are installed again
        for c in ("confirmed_at", "confirm_by", "vendor_ref", "confirmation", "kind"):
            b.drop_column(c)
    outcome_stops.install(op)
