"""Journeys and re-checked triggers (issue 13): the journey and step of a trigger, and a flag
for a pending trigger kept because a change could not be evaluated.

Revision ID: 0006_journeys
Revises: 0005_patient_id
Create Date: 2026-12-06

Expand-only: three nullable columns on ``trigger`` (added in batch mode on SQLite).
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0006_journeys"
down_revision = "0005_patient_id"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trigger") as batch:
        batch.add_column(sa.Column("journey_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("journey_step", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("flag", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger") as batch:
        batch.drop_column("flag")
        batch.drop_column("journey_step")
        batch.drop_column("journey_id")
