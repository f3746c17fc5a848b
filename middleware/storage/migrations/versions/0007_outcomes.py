"""Outcomes and holdouts (issue 14): one row per journey entry's goal, and persisted
holdout assignments.

Revision ID: 0007_outcomes
Revises: 0006_journeys
Create Date: 2026-12-06

Expand-only: two new tables with their indexes and CHECKs.
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel  # noqa: F401
from alembic import op

revision = "0007_outcomes"
down_revision = "0006_journeys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "holdout_assignment",
        sa.Column("experiment", sa.String(length=128), nullable=False),
        sa.Column("period", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=300), nullable=False),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("assigned_at", sa.Float(), nullable=False),
        sa.CheckConstraint("arm IN ('treated', 'held_out')", name=op.f("ck_holdout_assignment_arm")),
        sa.PrimaryKeyConstraint("experiment", "period", "patient_id", name=op.f("pk_holdout_assignment")),
    )
    op.create_table(
        "outcome",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entry_key", sa.String(length=400), nullable=False),
        sa.Column("goal_id", sa.String(length=128), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("journey_id", sa.String(length=128), nullable=True),
        sa.Column("ruleset_version", sa.String(length=64), nullable=True),
        sa.Column("patient_key", sa.String(length=300), nullable=True),
        sa.Column("patient_id", sa.String(length=300), nullable=True),
        sa.Column("origin_event_id", sa.Integer(), nullable=True),
        sa.Column("origin_resource_key", sa.String(length=200), nullable=True),
        sa.Column("trigger_id", sa.Integer(), nullable=True),
        sa.Column("experiment", sa.String(length=128), nullable=True),
        sa.Column("period", sa.String(length=64), nullable=True),
        sa.Column("arm", sa.String(length=16), nullable=True),
        sa.Column("delivered", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("achieved_at", sa.Float(), nullable=True),
        sa.Column("elapsed_s", sa.Float(), nullable=True),
        sa.Column("anchor_at", sa.Float(), nullable=True),
        sa.Column("window_opens", sa.Float(), nullable=True),
        sa.Column("window_closes", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'achieved', 'missed', 'excluded')", name=op.f("ck_outcome_status")),
        sa.CheckConstraint("arm IN ('treated', 'held_out')", name=op.f("ck_outcome_arm")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outcome")),
        sa.UniqueConstraint("entry_key", name="uq_outcome_entry"),
    )
    op.create_index("ix_outcome_patient", "outcome", ["patient_key", "status"], unique=False)
    op.create_index("ix_outcome_open", "outcome", ["status", "window_closes"], unique=False)
    op.create_index("ix_outcome_goal", "outcome", ["goal_id", "experiment", "period", "arm", "status", "delivered"],
                    unique=False)
    op.create_index("ix_outcome_elapsed", "outcome", ["goal_id", "experiment", "period", "arm", "status", "elapsed_s"], unique=False)
    op.create_index("ix_outcome_trigger_id", "outcome", ["trigger_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outcome_trigger_id", table_name="outcome")
    op.drop_index("ix_outcome_elapsed", table_name="outcome")
    op.drop_index("ix_outcome_goal", table_name="outcome")
    op.drop_index("ix_outcome_open", table_name="outcome")
    op.drop_index("ix_outcome_patient", table_name="outcome")
    op.drop_table("outcome")
    op.drop_table("holdout_assignment")
