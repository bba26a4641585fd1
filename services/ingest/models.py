"""Tables of the ingest service (schema "ingest")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.jobs import JobColumns, utcnow

SCHEMA = "ingest"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Member(Base):
    """A user's role in a project. Users live in the auth service: we keep their id and
    the email their token carried when they joined, never a foreign key."""

    __tablename__ = "members"

    project_id: Mapped[str] = mapped_column(
        ForeignKey(f"{SCHEMA}.projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    email: Mapped[str] = mapped_column(String(320), default="")
    role: Mapped[str] = mapped_column(String(16))  # owner | editor | viewer
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey(f"{SCHEMA}.projects.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(80))
    filename: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    # Byte ranges received so far, merged: [[start, end), ...]
    ranges: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    received_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Dataset(JobColumns, Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey(f"{SCHEMA}.projects.id", ondelete="CASCADE"), index=True
    )
    owner: Mapped[str] = mapped_column(String(80))
    display_name: Mapped[str] = mapped_column(String(200))
    source_filename: Mapped[str] = mapped_column(String(500))
    format: Mapped[str] = mapped_column(String(16), default="")  # csv | parquet | jsonl | arrow
    delimiter: Mapped[str] = mapped_column(String(4), default="")
    upload_id: Mapped[str] = mapped_column(String(64), default="")
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    row_count: Mapped[int] = mapped_column(BigInteger, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    parsed_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    quote_char: Mapped[str] = mapped_column(String(4), default="")
    encoding: Mapped[str] = mapped_column(String(16), default="")
    compression: Mapped[str] = mapped_column(String(8), default="")
    # While an append runs: its upload (the rows of the earlier version stay readable).
    appending_upload_id: Mapped[str] = mapped_column(String(64), default="")
    append_error: Mapped[str] = mapped_column(Text, default="")
    # The parts an import has committed (importer.Checkpoint): a re-delivered import resumes there.
    import_checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
