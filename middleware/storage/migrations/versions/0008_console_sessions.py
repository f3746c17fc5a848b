"""Console sessions (issue 15): one row per signed-in console user, shared by every replica.

Revision ID: 0008_console_sessions
Revises: 0007_outcomes
Create Date: 2026-12-06

Expand-only: one new table with its indexes. Only the SHA-256 of each session token is stored.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0008_console_sessions"
down_revision = "0007_outcomes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_session",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=100), nullable=False),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("permissions", sa.Text(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_console_session")),
    )
    op.create_index("ix_console_session_user", "console_session", ["user_name"], unique=False)
    op.create_index("ix_console_session_expires", "console_session", ["expires_at"], unique=False)
    op.create_index("ix_console_session_last_seen", "console_session", ["last_seen"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_console_session_last_seen", table_name="console_session")
    op.drop_index("ix_console_session_expires", table_name="console_session")
    op.drop_index("ix_console_session_user", table_name="console_session")
    op.drop_table("console_session")
