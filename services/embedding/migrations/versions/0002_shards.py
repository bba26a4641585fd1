"""shards and checkpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "embedding"


def upgrade() -> None:
    op.add_column(
        "embeddings", sa.Column("float16", sa.Boolean(), nullable=False, server_default=sa.false()), schema=SCHEMA
    )
    op.add_column(
        "embeddings", sa.Column("generation", sa.Integer(), nullable=False, server_default="0"), schema=SCHEMA
    )
    op.add_column(
        "embeddings", sa.Column("extend_from", sa.BigInteger(), nullable=False, server_default="0"), schema=SCHEMA
    )
    op.create_table(
        "shards",
        sa.Column("embedding_id", sa.String(64), primary_key=True),
        sa.Column("index", sa.Integer(), primary_key=True),
        sa.Column("generation", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("start_row", sa.BigInteger(), nullable=False),
        sa.Column("end_row", sa.BigInteger(), nullable=False),
        sa.Column("done_row", sa.BigInteger(), nullable=False),
        sa.Column("seen_row", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="PENDING"),
        sa.Column("worker", sa.String(200), nullable=False, server_default=""),
        sa.Column("workers", sa.JSON(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("truncated", sa.BigInteger(), nullable=False, server_default="0"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("shards", schema=SCHEMA)
    for column in ("extend_from", "generation", "float16"):
        op.drop_column("embeddings", column, schema=SCHEMA)
