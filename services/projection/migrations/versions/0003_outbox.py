"""the outbox: messages for NATS written with the change they announce (services/common/outbox.py)

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

from services.common.outbox import TABLE, outbox_columns

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SCHEMA = "projection"


def upgrade() -> None:
    op.create_table(TABLE, *outbox_columns(), schema=SCHEMA)


def downgrade() -> None:
    op.drop_table(TABLE, schema=SCHEMA)
