"""The embedding service's tables (schema "embedding")."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.jobs import JobColumns


class Base(DeclarativeBase):
    metadata = MetaData(schema="embedding")


class EmbeddingRow(JobColumns, Base):
    """One embedding of a dataset; the vectors live in the blob store."""

    __tablename__ = "embeddings"
    __table_args__ = (Index("ix_embeddings_dataset", "project_id", "dataset_id", "create_time", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(256))
    text_columns: Mapped[list[str]] = mapped_column(JSON, default=list)
    template: Mapped[str] = mapped_column(Text, default="")
    dimension: Mapped[int] = mapped_column(Integer, default=0)
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    truncated_count: Mapped[int] = mapped_column(BigInteger, default=0)
    project_when_done: Mapped[bool] = mapped_column(Boolean, default=False)

    @property
    def project(self) -> str:
        return f"projects/{self.project_id}"

    @property
    def dataset(self) -> str:
        return f"projects/{self.project_id}/datasets/{self.dataset_id}"

    @property
    def name(self) -> str:
        return f"{self.dataset}/embeddings/{self.id}"
