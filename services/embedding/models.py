"""The embedding service's tables (schema "embedding")."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, MetaData, String, Text
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
    # Columns holding vectors the dataset brought (services/embedding/imported.py); empty:
    # the model embeds text_columns.
    vector_columns: Mapped[list[str]] = mapped_column(JSON, default=list)
    template: Mapped[str] = mapped_column(Text, default="")
    dimension: Mapped[int] = mapped_column(Integer, default=0)
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    truncated_count: Mapped[int] = mapped_column(BigInteger, default=0)
    project_when_done: Mapped[bool] = mapped_column(Boolean, default=False)
    float16: Mapped[bool] = mapped_column(Boolean, default=False)
    # Each run (the first, then each extension) has its own shards; a run that is given
    # up (an extension cancelled) is left behind by moving to the next generation.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # Rows already in vectors.arrow before this run (an extension embeds from here).
    extend_from: Mapped[int] = mapped_column(BigInteger, default=0)

    @property
    def project(self) -> str:
        return f"projects/{self.project_id}"

    @property
    def dataset(self) -> str:
        return f"projects/{self.project_id}/datasets/{self.dataset_id}"

    @property
    def name(self) -> str:
        return f"{self.dataset}/embeddings/{self.id}"


class ShardRow(Base):
    """A row range of an embedding run that one worker at a time embeds, checkpointing
    every few thousand rows as a finished Arrow part file."""

    __tablename__ = "shards"

    embedding_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    start_row: Mapped[int] = mapped_column(BigInteger)
    end_row: Mapped[int] = mapped_column(BigInteger)
    done_row: Mapped[int] = mapped_column(BigInteger)  # rows before this are checkpointed
    seen_row: Mapped[int] = mapped_column(BigInteger)  # progress, ahead of the checkpoint
    state: Mapped[str] = mapped_column(String(16), default="PENDING")  # PENDING, RUNNING, DONE
    worker: Mapped[str] = mapped_column(String(200), default="")
    workers: Mapped[list[str]] = mapped_column(JSON, default=list)  # every worker that took part
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    parts: Mapped[list[list[int]]] = mapped_column(JSON, default=list)  # [start, end] per part file
    truncated: Mapped[int] = mapped_column(BigInteger, default=0)
