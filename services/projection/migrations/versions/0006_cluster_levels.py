"""Cluster levels: each cluster's level (0 the finest, whose ids the points carry) and the
id of the cluster one level up that holds it (-1 at the top and for noise).

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
    op.add_column(
        "clusters", sa.Column("level", sa.Integer, nullable=False, server_default="0"), schema="projection"
    )
    op.add_column(
        "clusters", sa.Column("parent_id", sa.Integer, nullable=False, server_default="-1"), schema="projection"
    )


def downgrade() -> None:
    op.drop_column("clusters", "parent_id", schema="projection")
    op.drop_column("clusters", "level", schema="projection")
