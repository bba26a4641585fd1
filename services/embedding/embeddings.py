"""Embeddings of datasets: creating the job, reading, listing, deleting and cancelling
them, and turning rows into messages. Plain Python; the servicer speaks gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import pyarrow as pa
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from embedviz.v1 import embedding_pb2, ingest_pb2
from services.common import paging
from services.common.auth import Identity
from services.common.blobs import BlobStore
from services.common.clients import ProjectAccess
from services.common.db import Database
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, excerpt
from services.common.events import EVENTS_STREAM, EventBus, event_subject
from services.common.jobs import CANCELLED, PENDING, SUCCEEDED, TERMINAL, job_to_proto, timestamp, utcnow
from services.common.names import new_id, parse
from services.common.outbox import Outbox
from services.embedding import imported
from services.embedding.encoder import ModelRegistry
from services.embedding.models import EmbeddingRow, ShardRow
from services.embedding.texts import columns_to_embed
from services.embedding.vectors import embedding_prefix, parts_prefix

KIND = "embedding"
# Published when an embedding is removed: events.embedding-deleted.{embedding id}.
DELETED_KIND = "embedding-deleted"
DATASET_PATTERN = "projects/{project}/datasets/{dataset}"
EMBEDDING_PATTERN = "projects/{project}/datasets/{dataset}/embeddings/{embedding}"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

VIEWER = ingest_pb2.ROLE_VIEWER
EDITOR = ingest_pb2.ROLE_EDITOR


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    state: str
    columns: list[str]
    row_count: int
    error: str = ""


class DatasetSource(Protocol):
    """Where datasets are read from (the ingest service, with the caller's identity)."""

    async def get(self, identity: Identity, dataset: str) -> DatasetInfo: ...

    def stream_rows(
        self, identity: Identity, dataset: str, columns: Sequence[str], batch_rows: int = 1024,
        start_row: int = 0, row_count: int = 0,
    ) -> AsyncIterator[tuple[int, pa.Table]]: ...


def check_embeddable(dataset: DatasetInfo, columns: Sequence[str]) -> None:
    """The dataset must be imported and have every column asked for."""
    if dataset.state in ("PENDING", "RUNNING"):
        raise FailedPrecondition(
            f"{dataset.name} is still importing; embed it once the import has succeeded", "DATASET_NOT_READY"
        )
    if dataset.state == "FAILED":
        detail = f": {dataset.error}" if dataset.error else ""
        raise FailedPrecondition(f"{dataset.name} failed to import{detail}; upload it again", "DATASET_FAILED")
    if dataset.state != "SUCCEEDED":
        raise FailedPrecondition(
            f"{dataset.name} was not imported (its import was cancelled); upload it again", "DATASET_NOT_READY"
        )
    for column in columns:
        if column not in dataset.columns:
            raise InvalidArgument(
                f"column '{excerpt(column)}' not found; the dataset has: {', '.join(dataset.columns)}",
                "COLUMN_NOT_FOUND",
            )


def embedding_message(row: EmbeddingRow) -> embedding_pb2.Embedding:
    message = embedding_pb2.Embedding(
        name=row.name,
        model=row.model,
        text_columns=list(row.text_columns or []),
        vector_columns=list(row.vector_columns or []),
        template=row.template or "",
        dimension=row.dimension or 0,
        row_count=row.row_count or 0,
        job=job_to_proto(row),
        project_when_done=bool(row.project_when_done),
        truncated_count=row.truncated_count or 0,
        creator=row.owner or "",
        float16=bool(row.float16),
    )
    created = timestamp(row.create_time)
    if created is not None:
        message.create_time.CopyFrom(created)
    return message


@dataclass(frozen=True)
class EmbeddingSpec:
    model: str
    text_columns: list[str]
    template: str
    project_when_done: bool
    float16: bool = False
    vector_columns: tuple[str, ...] = ()


def _page_token(row: EmbeddingRow, parent: str) -> str:
    return paging.encode({"p": parent, "t": row.create_time.isoformat(), "id": row.id})


def _read_page_token(token: str, parent: str) -> tuple[datetime, str]:
    try:
        data = paging.decode(token)
        if data["p"] != parent:
            raise ValueError
        return datetime.fromisoformat(data["t"]), str(data["id"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is not valid for this list; start again without it") from None


class Embeddings:
    """The embedding resources of this service."""

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        blobs: BlobStore,
        access: ProjectAccess,
        models: ModelRegistry,
        datasets: DatasetSource,
        outbox: Outbox,
    ) -> None:
        self.db = db
        self.bus = bus
        self.outbox = outbox  # work and deletion events, sent with the commit that makes them
        self.blobs = blobs
        self.access = access
        self.models = models
        self.datasets = datasets

    async def publish(self, row: EmbeddingRow) -> None:
        await self.bus.publish_job_state(KIND, row.id, embedding_message(row).SerializeToString())

    async def announce(self, session: AsyncSession, row: EmbeddingRow) -> None:
        """The row's new state through the outbox, committed with it: for a state another
        service acts on (a finished embedding that asks for its projection), which the best
        effort `publish` could lose."""
        message = embedding_message(row).SerializeToString()
        await self.outbox.add(session, event_subject(KIND, row.id), EVENTS_STREAM, message)

    async def _find(self, name: str) -> EmbeddingRow:
        parts = parse(name, EMBEDDING_PATTERN)
        async with self.db.sessions() as session:
            row = await session.get(EmbeddingRow, parts["embedding"])
        if row is None or row.project_id != parts["project"] or row.dataset_id != parts["dataset"]:
            raise NotFound(f"{name} not found")
        return row

    async def get(self, identity: Identity, name: str, minimum: int = VIEWER) -> EmbeddingRow:
        parts = parse(name, EMBEDDING_PATTERN)
        await self.access.require(identity, f"projects/{parts['project']}", minimum, name)
        return await self._find(name)

    async def load(self, name: str) -> EmbeddingRow:
        """The row without an access check (for a stream that already checked)."""
        return await self._find(name)

    async def create(self, identity: Identity, parent: str, spec: EmbeddingSpec) -> EmbeddingRow:
        parts = parse(parent, DATASET_PATTERN)
        await self.access.require(identity, f"projects/{parts['project']}", EDITOR, parent)
        if spec.vector_columns:
            if spec.model and spec.model not in (imported.IMPORTED, f"models/{imported.IMPORTED}"):
                raise InvalidArgument("name a model or vector_columns, not both: imported vectors need no model")
            imported.check_names(spec.vector_columns)
            columns = list(dict.fromkeys(spec.text_columns))
            dataset = await self.datasets.get(identity, parent)
            check_embeddable(dataset, [*spec.vector_columns, *columns])
            model_name, dimension = imported.IMPORTED, await self._imported_dimension(identity, parent, spec)
        else:
            columns = columns_to_embed(spec.text_columns, spec.template)
            model = self.models.resolve(spec.model)
            dataset = await self.datasets.get(identity, parent)
            check_embeddable(dataset, columns)
            model_name, dimension = model.name, model.dimension
        row = EmbeddingRow(
            id=new_id(),
            project_id=parts["project"],
            dataset_id=parts["dataset"],
            owner=identity.user,
            model=model_name,
            text_columns=columns,
            vector_columns=list(spec.vector_columns),
            template=spec.template,
            dimension=dimension,
            row_count=0,
            truncated_count=0,
            project_when_done=spec.project_when_done,
            float16=spec.float16,
            generation=0,
            extend_from=0,
            state=PENDING,
            total=dataset.row_count,
        )
        async with self.db.sessions() as session:
            session.add(row)
            await self.outbox.add_work(session, KIND, {"id": row.id, "owner": identity.user})
            await session.commit()
        await self.publish(row)
        return row

    async def _imported_dimension(self, identity: Identity, dataset: str, spec: EmbeddingSpec) -> int:
        """The length of the vectors the columns hold: their count for numeric columns, else
        the most common length over the first rows of the list column."""
        first = pa.table({})
        async for _, table in self.datasets.stream_rows(identity, dataset, list(spec.vector_columns), 256, 0, 256):
            first = table
            break
        columns = list(spec.vector_columns)
        if first.num_rows == 0:
            raise FailedPrecondition(f"{dataset} has no rows to read vectors from", "NO_VECTORS")
        dimension = imported.check_columns(columns, {f.name: f.type for f in first.schema})
        return dimension if dimension is not None else imported.usual_length(first, columns[0])

    async def list(
        self, identity: Identity, parent: str, page_size: int, page_token: str
    ) -> tuple[list[EmbeddingRow], str]:
        parts = parse(parent, DATASET_PATTERN)
        await self.access.require(identity, f"projects/{parts['project']}", VIEWER, parent)
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        query = select(EmbeddingRow).where(
            EmbeddingRow.project_id == parts["project"], EmbeddingRow.dataset_id == parts["dataset"]
        )
        if page_token:
            after_time, after_id = _read_page_token(page_token, parent)
            query = query.where(
                or_(
                    EmbeddingRow.create_time > after_time,
                    and_(EmbeddingRow.create_time == after_time, EmbeddingRow.id > after_id),
                )
            )
        query = query.order_by(EmbeddingRow.create_time, EmbeddingRow.id).limit(size + 1)
        async with self.db.sessions() as session:
            rows = list((await session.scalars(query)).all())
        next_token = _page_token(rows[size - 1], parent) if len(rows) > size else ""
        return rows[:size], next_token

    async def delete(self, identity: Identity, name: str) -> None:
        await self._remove(await self.get(identity, name, EDITOR))

    async def _remove(self, row: EmbeddingRow) -> None:
        """Remove an embedding with its vectors; the deletion event (so the projection
        service removes the projections made from it) is committed with the row's deletion,
        through the outbox."""
        async with self.db.sessions() as session:
            current = await session.get(EmbeddingRow, row.id, with_for_update=True)
            if current is not None:
                await session.delete(current)
                event: dict[str, object] = {
                    "embedding": embedding_message(row).name,
                    "project_id": row.project_id,
                    "dataset_id": row.dataset_id,
                    "embedding_id": row.id,
                }
                await self.outbox.add_event(session, DELETED_KIND, row.id, event)
            await session.execute(delete(ShardRow).where(ShardRow.embedding_id == row.id))
            await session.commit()
        # A worker still on it learns from its next progress write (JobGone) and stops.
        self.blobs.delete_dir(embedding_prefix(row.id))
        await self.bus.delete_events(KIND, row.id)

    async def remove_for_dataset(self, event: dict[str, object]) -> None:
        """Handler of `events.dataset-deleted.*`: the dataset is gone, so are its embeddings.
        Idempotent: the event may come again."""
        async with self.db.sessions() as session:
            rows = (
                await session.scalars(
                    select(EmbeddingRow).where(
                        EmbeddingRow.project_id == str(event["project_id"]),
                        EmbeddingRow.dataset_id == str(event["dataset_id"]),
                    )
                )
            ).all()
        for row in rows:
            await self._remove(row)

    async def cancel(self, identity: Identity, name: str) -> EmbeddingRow:
        """Stop the job. Workers see it within seconds (at their next progress write) and
        stop; the partial vectors are removed here at once, and again by each worker. An
        extension that is cancelled is dropped: the embedding keeps its earlier rows."""
        row = await self.get(identity, name, EDITOR)
        async with self.db.sessions() as session:
            current = await session.get(EmbeddingRow, row.id, with_for_update=True)
            if current is None:
                raise NotFound(f"{name} not found")
            dropped_generation = None
            if current.state not in TERMINAL:
                now = utcnow()
                if current.extend_from > 0:
                    dropped_generation = current.generation
                    current.generation += 1
                    current.state = SUCCEEDED
                    current.row_count = current.done = current.total = current.extend_from
                    current.progress = 1.0
                    current.stage = "done"
                    current.extend_from = 0
                else:
                    dropped_generation = current.generation
                    current.state = CANCELLED
                current.end_time = now
                current.update_time = now
                current.eta_seconds = 0.0
                current.rate = 0.0
            await session.commit()
        if dropped_generation is not None:
            prefix = (
                parts_prefix(row.id, dropped_generation) if current.state == SUCCEEDED else embedding_prefix(row.id)
            )
            try:
                await asyncio.to_thread(self.blobs.delete_dir, prefix)
            except OSError:
                pass  # a worker writing a part now removes it when it sees the cancel
        await self.publish(current)
        return current

    async def extend(self, identity: Identity, name: str) -> EmbeddingRow:
        """Embed the rows appended to the dataset since the embedding was made, and append
        their vectors to the vector file."""
        row = await self.get(identity, name, EDITOR)
        if row.state != SUCCEEDED:
            raise FailedPrecondition(
                f"{name} can be extended once its job has succeeded; it is {row.state.lower()}", "EMBEDDING_NOT_READY"
            )
        dataset = await self.datasets.get(identity, row.dataset)
        check_embeddable(dataset, [*(row.vector_columns or []), *row.text_columns])
        if dataset.row_count < row.row_count:
            raise FailedPrecondition(
                f"{row.dataset} has {dataset.row_count} rows, fewer than the {row.row_count} this embedding has; "
                "create a new embedding of it",
                "DATASET_SHRANK",
            )
        if dataset.row_count == row.row_count:
            raise FailedPrecondition(
                f"no rows were appended to {row.dataset} since {name} was made ({row.row_count} rows); "
                "append rows to the dataset first",
                "NOTHING_TO_EXTEND",
            )
        async with self.db.sessions() as session:
            current = await session.get(EmbeddingRow, row.id, with_for_update=True)
            if current is None:
                raise NotFound(f"{name} not found")
            if current.state != SUCCEEDED:
                raise FailedPrecondition(f"{name} is already being extended; watch it", "EMBEDDING_NOT_READY")
            now = utcnow()
            current.generation += 1
            current.extend_from = current.row_count
            current.state = PENDING
            current.stage = ""
            current.done = current.row_count
            current.total = dataset.row_count
            current.progress = current.row_count / dataset.row_count
            current.rate = 0.0
            current.eta_seconds = 0.0
            current.error = ""
            current.end_time = None
            current.update_time = now
            await self.outbox.add_work(session, KIND, {"id": current.id, "owner": identity.user})
            await session.commit()
        await self.publish(current)
        return current

    async def readable_vectors(self, identity: Identity, name: str) -> EmbeddingRow:
        row = await self.get(identity, name, VIEWER)
        if row.state != SUCCEEDED:
            raise FailedPrecondition(
                f"{name} has no vectors yet: its job is {row.state.lower()}"
                + ("; watch it until it succeeds" if row.state in ("PENDING", "RUNNING") else ""),
                "EMBEDDING_NOT_READY",
            )
        return row
