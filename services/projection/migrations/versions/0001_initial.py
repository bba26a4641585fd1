"""projections and their clusters

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "projection"


def upgrade() -> None:
    op.create_table(
        "projections",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("project_id", sa.String(63), nullable=False, index=True),
        sa.Column("dataset_id", sa.String(63), nullable=False),
        sa.Column("embedding_id", sa.String(63), nullable=False, index=True),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("dimensions", sa.Integer, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("point_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cluster_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("stage", sa.String(64), nullable=False, server_default=""),
        sa.Column("done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rate", sa.Float, nullable=False, server_default="0"),
        sa.Column("eta_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "clusters",
        sa.Column(
            "projection_id",
            sa.String(32),
            sa.ForeignKey(f"{SCHEMA}.projections.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("cluster_id", sa.Integer, primary_key=True),
        sa.Column("label", sa.Text, nullable=False, server_default=""),
        sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("centroid", sa.JSON, nullable=False),
        sa.Column("terms", sa.JSON, nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("clusters", schema=SCHEMA)
    op.drop_table("projections", schema=SCHEMA)
