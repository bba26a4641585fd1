"""Signing keys published ahead of use: activate_time (null: signs from creation).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S = "auth"


def upgrade() -> None:
    op.add_column("signing_keys", sa.Column("activate_time", sa.DateTime(timezone=True), nullable=True), schema=S)


def downgrade() -> None:
    op.drop_column("signing_keys", "activate_time", schema=S)
