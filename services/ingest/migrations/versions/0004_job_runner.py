"""the job runner's columns: heartbeat, attempts, last retried error, holding worker, message
(services/common/runner.py)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

from services.common.runner import runner_columns

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in runner_columns():
        op.add_column("datasets", column, schema="ingest")


def downgrade() -> None:
    for column in reversed(runner_columns()):
        op.drop_column("datasets", column.name, schema="ingest")
