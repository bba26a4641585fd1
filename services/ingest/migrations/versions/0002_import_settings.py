"""Import settings (encoding, quote, compression), parsed bytes, appends.

Revision ID: 0002
Revises: 0001
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S = "ingest"
COLUMNS: list[sa.Column[Any]] = [
    sa.Column("parsed_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("quote_char", sa.String(4), nullable=False, server_default=""),
    sa.Column("encoding", sa.String(16), nullable=False, server_default=""),
    sa.Column("compression", sa.String(8), nullable=False, server_default=""),
    sa.Column("appending_upload_id", sa.String(64), nullable=False, server_default=""),
    sa.Column("append_error", sa.Text, nullable=False, server_default=""),
]


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("datasets", column, schema=S)
    op.create_index(
        "ix_uploads_expiry", "uploads", ["expire_time"], schema=S, postgresql_where=sa.text("dataset_id IS NULL")
    )
    op.create_index("ix_datasets_owner", "datasets", ["owner"], schema=S)


def downgrade() -> None:
    op.drop_index("ix_datasets_owner", "datasets", schema=S)
    op.drop_index("ix_uploads_expiry", "uploads", schema=S)
    for column in COLUMNS:
        op.drop_column("datasets", column.name, schema=S)
