"""The parts an import has committed, so that a re-delivered import resumes after them.

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
    op.add_column("datasets", sa.Column("import_checkpoint", sa.JSON, nullable=True), schema="ingest")


def downgrade() -> None:
    op.drop_column("datasets", "import_checkpoint", schema="ingest")
