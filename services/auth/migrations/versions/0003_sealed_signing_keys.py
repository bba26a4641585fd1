"""Signing keys encrypted at rest: private_pem becomes sealed_private_key. Rows written by
earlier versions still hold a plaintext PEM there; auth seals them when it starts
(KeyRing.ensure_key), since only it has the key-encryption key.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

S = "auth"


def upgrade() -> None:
    op.alter_column("signing_keys", "private_pem", new_column_name="sealed_private_key", schema=S)


def downgrade() -> None:
    # The keys stay sealed: an earlier version cannot read them (it expects a PEM).
    op.alter_column("signing_keys", "sealed_private_key", new_column_name="private_pem", schema=S)
