"""vectors a dataset brings: the columns that hold them (services/embedding/imported.py)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "embeddings",
        sa.Column("vector_columns", sa.JSON(), nullable=False, server_default=sa.text("'[]'")),
        schema="embedding",
    )


def downgrade() -> None:
    op.drop_column("embeddings", "vector_columns", schema="embedding")
