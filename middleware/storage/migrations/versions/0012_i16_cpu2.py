"""Drop ``ix_trigger_cancel``: an index no statement reads (issue 16, processing CPU).

Revision ID: 0012_i16_cpu2
Revises: 0011_destination_exits
Create Date: 2026-12-07

``trigger.cancel_scope`` is written with each trigger and kept on its row, but no query filters or
sorts on it: cancellations read pending triggers by patient
or resource (``ix_trigger_patient``, ``ix_trigger_rule_resource``). The index on
``(cancel_scope, status)`` was one more B-tree for every trigger INSERT and for every status
change (firing, cancelling, skipping) to maintain. On SQLite, with 1,000-6,000 triggers, a
trigger INSERT took 23-30 us with it and 15-17 us without (``bench/trigger_insert.py``; ``docs/benchmarks.md`` §10,
"Processing statements"). Contract-only (an index, no data); the downgrade builds it again.
"""
from __future__ import annotations

from alembic import op

revision = "0012_i16_cpu2"
down_revision = "0011_destination_exits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_trigger_cancel", table_name="trigger")


def downgrade() -> None:
    op.create_index("ix_trigger_cancel", "trigger", ["cancel_scope", "status"])
