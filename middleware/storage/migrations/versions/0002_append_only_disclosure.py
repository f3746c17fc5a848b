"""The disclosure audit is append-only in the database: triggers refuse UPDATE and DELETE.

Revision ID: 0002_append_only_disclosure
Revises: 0001_baseline
Create Date: 2026-12-06

SQLite: BEFORE UPDATE / BEFORE DELETE triggers that RAISE(ABORT). PostgreSQL: a row trigger
for UPDATE OR DELETE and a statement trigger for TRUNCATE calling one plpgsql function.
"""
from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
import sqlmodel  # noqa: F401
from alembic import op

from middleware.storage.append_only import drop_statements, recreate_append_only

revision = "0002_append_only_disclosure"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    recreate_append_only(op)


def downgrade() -> None:
    for stmt in drop_statements(op.get_bind().dialect.name):
        op.execute(stmt)
