"""quality of a map (trustworthiness, label agreement, fitted rows)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "projection"


def upgrade() -> None:
    op.add_column("projections", sa.Column("quality", sa.JSON, nullable=True), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("projections", "quality", schema=SCHEMA)
