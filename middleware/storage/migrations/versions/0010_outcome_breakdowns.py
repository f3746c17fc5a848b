"""Outcome report breakdowns (issue 14): each journey entry records the destination(s) its
rule sends to and the local month and ISO week of its anchor; the report's covering index
gains them (and the rule-set version and trigger id already stored).

Revision ID: 0010_outcome_breakdowns
Revises: 0009_console_rollups
Create Date: 2026-12-06

Expand-only. ``stopped``: why the entry's trigger was not delivered (a reason category), kept
by database triggers from now on (storage/outcome_stops.py) and backfilled from the triggers'
and deliveries' recorded reasons. Backfill of the breakdowns: ``destination`` of an existing entry that has a trigger is copied from
that trigger's ``destinations``; held-out entries opened before this revision have no trigger
and keep NULL, as do ``anchor_month`` / ``anchor_week`` of every older entry (the site's zone
the new values are computed in is not known to a migration): reports show them as "unknown".
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

from middleware.storage import outcome_stops

revision = "0010_outcome_breakdowns"
down_revision = "0009_console_rollups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outcome") as b:
        b.add_column(sa.Column("destination", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=True))
        b.add_column(sa.Column("anchor_month", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True))
        b.add_column(sa.Column("anchor_week", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True))
        b.add_column(sa.Column("stopped", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
    for stmt in outcome_stops.backfill_statements():
        op.execute(stmt)
    outcome_stops.install(op)
    op.execute('UPDATE outcome SET destination = (SELECT t.destinations FROM "trigger" t WHERE t.id = outcome.trigger_id) '
               "WHERE trigger_id IS NOT NULL")
    op.drop_index("ix_outcome_goal", table_name="outcome")
    op.create_index("ix_outcome_report", "outcome", ["goal_id", "experiment", "period", "arm", "status", "delivered",
                                                      "ruleset_version", "destination", "anchor_month", "anchor_week",
                                                      "stopped", "trigger_id"], unique=False)


def downgrade() -> None:
    for stmt in outcome_stops.drop_statements(op.get_bind().dialect.name):
        op.execute(stmt)
    op.drop_index("ix_outcome_report", table_name="outcome")
    op.create_index("ix_outcome_goal", "outcome", ["goal_id", "experiment", "period", "arm", "status", "delivered"],
                    unique=False)
    with op.batch_alter_table("outcome") as b:
        b.drop_column("stopped")
        b.drop_column("anchor_week")
        b.drop_column("anchor_month")
        b.drop_column("destination")
