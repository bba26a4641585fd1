"""The stages a map job has finished, so that a re-delivered job resumes after them.

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
    op.add_column("projections", sa.Column("stages", sa.JSON, nullable=True), schema="projection")


def downgrade() -> None:
    op.drop_column("projections", "stages", schema="projection")
