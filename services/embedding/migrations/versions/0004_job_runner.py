"""the job runner's columns: heartbeat, attempts, last retried error, holding worker, message
(services/common/runner.py)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "embedding"
TABLE = "embeddings"


def upgrade() -> None:
    op.add_column(TABLE, sa.Column("heartbeat_time", sa.DateTime(timezone=True), nullable=True), schema=SCHEMA)
    op.add_column(TABLE, sa.Column("attempts", sa.Integer, nullable=False, server_default="0"), schema=SCHEMA)
    op.add_column(TABLE, sa.Column("last_error", sa.Text, nullable=False, server_default=""), schema=SCHEMA)
    op.add_column(TABLE, sa.Column("worker", sa.String(200), nullable=False, server_default=""), schema=SCHEMA)
    op.add_column(TABLE, sa.Column("work", sa.JSON, nullable=True), schema=SCHEMA)


def downgrade() -> None:
    for column in ("work", "worker", "last_error", "attempts", "heartbeat_time"):
        op.drop_column(TABLE, column, schema=SCHEMA)
