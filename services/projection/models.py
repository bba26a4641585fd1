"""The projection service's tables (schema "projection")."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.jobs import JobColumns


class Base(DeclarativeBase):
    metadata = MetaData(schema="projection")


class ProjectionRow(JobColumns, Base):
    __tablename__ = "projections"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(String(63), index=True)
    dataset_id: Mapped[str] = mapped_column(String(63))
    embedding_id: Mapped[str] = mapped_column(String(63), index=True)
    method: Mapped[str] = mapped_column(String(16))
    dimensions: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    # n_neighbors, min_dist, metric, perplexity, algorithm, k, min_cluster_size, space
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    point_count: Mapped[int] = mapped_column(BigInteger, default=0)
    cluster_count: Mapped[int] = mapped_column(Integer, default=0)
    # trustworthiness, sample_rows, neighbours, label_agreement, shuffled_label_agreement,
    # labelled_rows, fitted_rows, pre_reduction_dimensions (set when the job succeeds)
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the stages a running job has finished (stages.py): a re-delivered job resumes after them
    stages: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class ClusterRow(Base):
    __tablename__ = "clusters"

    projection_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("projection.projections.id", ondelete="CASCADE"), primary_key=True
    )
    cluster_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(Text, default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    centroid: Mapped[list[float]] = mapped_column(JSON, default=list)
    terms: Mapped[list[str]] = mapped_column(JSON, default=list)
    # 0: the finest level, whose ids the points carry; 1, 2: coarser (services/projection/hierarchy.py)
    level: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    parent_id: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
