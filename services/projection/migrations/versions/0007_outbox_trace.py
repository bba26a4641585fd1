"""the trace an outbox message belongs to, sent with it as NATS headers (services/common/outbox.py)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("headers", sa.Text(), nullable=True), schema="projection")


def downgrade() -> None:
    op.drop_column("outbox", "headers", schema="projection")
