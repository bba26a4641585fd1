"""the trace an outbox message belongs to, sent with it as NATS headers (services/common/outbox.py)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("headers", sa.Text(), nullable=True), schema="ingest")


def downgrade() -> None:
    op.drop_column("outbox", "headers", schema="ingest")
