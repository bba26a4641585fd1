"""Projection records and who may do what with them: create (also the follow-up of an
embedding made with project_when_done), get, list, delete, cancel, watch. The job that
fills a record in is job.py; the reads of a finished map are reads.py."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from embedviz.v1 import embedding_pb2, ingest_pb2, job_pb2, projection_pb2
from services.common import names
from services.common.auth import Identity
from services.common.blobs import BlobStore
from services.common.clients import DelegatedTokens, ProjectAccess
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.common.events import EventBus
from services.common.jobs import PENDING, SUCCEEDED, cancel_job, watch
from services.common.outbox import Outbox
from services.projection.messages import to_proto
from services.projection.models import ClusterRow, ProjectionRow
from services.projection.rules import (
    DEFAULT_PAGE_SIZE,
    EMBEDDING_PATTERN,
    FOLLOW_UP_NAMESPACE,
    KIND,
    MAX_PAGE_SIZE,
    PROJECTION_PATTERN,
    decode_page_token,
    encode_page_token,
    follow_up_spec,
    map_params,
    params_json,
)
from services.projection.settings import ProjectionSettings
from services.projection.sources import Sources
from services.projection.vectors import VectorFiles

log = logging.getLogger(__name__)


class ProjectionRecords:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: EventBus,
        access: ProjectAccess,
        delegated: DelegatedTokens,
        blobs: BlobStore,
        sources: Sources,
        vector_files: VectorFiles,
        settings: ProjectionSettings,
    ) -> None:
        """`vector_files`: the memory-mapped vectors behind search, forgotten with their
        embedding; `settings`: the scale of fits stored with each new projection."""
        self._sessions = sessions
        self._bus = bus
        self.outbox = Outbox(sessions, bus, "projection")  # map work, sent with the commit that makes it
        self._access = access
        self._delegated = delegated
        self._blobs = blobs
        self._sources = sources
        self._vector_files = vector_files
        self._settings = settings

    async def publish(self, row: ProjectionRow) -> None:
        await self._bus.publish_job_state(KIND, row.id, to_proto(row).SerializeToString())

    async def authorise(self, identity: Identity, name: str, pattern: str, minimum: int) -> dict[str, str]:
        parts = names.parse(name, pattern)
        await self._access.require(identity, f"projects/{parts['project']}", minimum, name)
        return parts

    async def load(self, parts: dict[str, str], name: str) -> ProjectionRow:
        async with self._sessions() as session:
            row = await session.get(ProjectionRow, parts["projection"])
        if (
            row is None
            or row.project_id != parts["project"]
            or row.dataset_id != parts["dataset"]
            or row.embedding_id != parts["embedding"]
        ):
            raise NotFound(f"{name} not found")
        return row

    async def readable(self, identity: Identity, name: str, minimum: int = ingest_pb2.ROLE_VIEWER) -> ProjectionRow:
        parts = await self.authorise(identity, name, PROJECTION_PATTERN, minimum)
        return await self.load(parts, name)

    async def succeeded(self, identity: Identity, name: str) -> ProjectionRow:
        row = await self.readable(identity, name)
        if row.state != SUCCEEDED:
            raise FailedPrecondition(
                f"{name} is {row.state.lower()}, not ready yet; wait until it has succeeded (WatchProjection)"
            )
        return row

    async def create(
        self, identity: Identity, parent: str, spec: projection_pb2.Projection, projection_id: str = ""
    ) -> ProjectionRow:
        parts = await self.authorise(identity, parent, EMBEDDING_PATTERN, ingest_pb2.ROLE_EDITOR)
        embedding = await self._sources.get_embedding(identity, parent)
        if not embedding.succeeded:
            raise FailedPrecondition(
                f"{parent} is {embedding.state_name}; a projection needs a finished embedding (WatchEmbedding)"
            )
        params = map_params(spec, embedding.row_count, self._settings)
        label_column = spec.label_column.strip()
        if label_column:
            columns = await self._sources.dataset_columns(
                identity, f"projects/{parts['project']}/datasets/{parts['dataset']}"
            )
            if label_column not in columns:
                raise InvalidArgument(
                    f"label_column '{label_column}' not found; the dataset has: {', '.join(columns)}"
                )
        stored = params_json(params)
        if label_column:
            stored["label_column"] = label_column
        row = ProjectionRow(
            id=projection_id or names.new_id(),
            owner=identity.user,
            project_id=parts["project"],
            dataset_id=parts["dataset"],
            embedding_id=parts["embedding"],
            method=params.method,
            dimensions=params.dimensions,
            seed=params.seed or 0,
            params=stored,
            point_count=0,
            cluster_count=0,
            quality={},
            state=PENDING,
            progress=0.0,
            stage="queued",
            done=0,
            total=embedding.row_count,
            rate=0.0,
            eta_seconds=0.0,
            error="",
        )
        async with self._sessions() as session:
            session.add(row)
            await self.outbox.add_work(session, KIND, {"id": row.id, "owner": identity.user})
            await session.commit()
        await self.publish(row)
        return row

    async def follow_up(self, data: bytes) -> ProjectionRow | None:
        """An embedding event: when the embedding has just succeeded and was created with
        project_when_done, start its default projection on behalf of its creator (once,
        however often the event comes). Returns the projection made, if any."""
        embedding = embedding_pb2.Embedding.FromString(data)
        if not embedding.project_when_done or embedding.job.state != job_pb2.JOB_STATE_SUCCEEDED:
            return None
        if not embedding.creator:
            log.warning("%s asks for a projection but its event names no creator; skipped", embedding.name)
            return None
        projection_id = uuid.uuid5(FOLLOW_UP_NAMESPACE, embedding.name).hex
        async with self._sessions() as session:
            if await session.get(ProjectionRow, projection_id) is not None:
                return None
        credentials = self._delegated.for_job(embedding.creator)
        try:
            return await credentials.call(
                lambda identity: self.create(
                    identity, embedding.name, follow_up_spec(int(embedding.row_count)), projection_id
                ),
                f"starting the projection that follows {embedding.name}",
            )
        except IntegrityError:
            return None  # another replica made it a moment ago
        except (NotFound, PermissionDenied, FailedPrecondition, InvalidArgument) as exc:
            log.info("no follow-up projection for %s: %s", embedding.name, exc.message)
            return None

    async def get(self, identity: Identity, name: str) -> ProjectionRow:
        return await self.readable(identity, name)

    async def list(
        self, identity: Identity, parent: str, page_size: int, page_token: str
    ) -> tuple[list[ProjectionRow], str]:
        parts = await self.authorise(identity, parent, EMBEDDING_PATTERN, ingest_pb2.ROLE_VIEWER)
        if page_size < 0:
            raise InvalidArgument(f"page_size is {page_size}; use 0 (the default, {DEFAULT_PAGE_SIZE}) or more")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        offset = decode_page_token(page_token)
        query = (
            select(ProjectionRow)
            .where(
                ProjectionRow.project_id == parts["project"],
                ProjectionRow.dataset_id == parts["dataset"],
                ProjectionRow.embedding_id == parts["embedding"],
            )
            .order_by(ProjectionRow.create_time.desc(), ProjectionRow.id)
            .offset(offset)
            .limit(size + 1)
        )
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        more = len(rows) > size
        return rows[:size], encode_page_token(offset + size) if more else ""

    async def delete(self, identity: Identity, name: str) -> None:
        row = await self.readable(identity, name, ingest_pb2.ROLE_EDITOR)
        await self._remove(row.id)

    async def _remove(self, projection_id: str) -> None:
        async with self._sessions() as session:
            await session.execute(delete(ClusterRow).where(ClusterRow.projection_id == projection_id))
            await session.execute(delete(ProjectionRow).where(ProjectionRow.id == projection_id))
            await session.commit()
        await asyncio.to_thread(self._blobs.delete_dir, f"projections/{projection_id}")
        await self._bus.delete_events(KIND, projection_id)

    async def remove_for_embedding(self, event: dict[str, object]) -> None:
        """Handler of `events.embedding-deleted.*` (published by the embedding service when
        an embedding goes, also when its dataset went): its projections go too. Idempotent."""
        async with self._sessions() as session:
            ids = (
                await session.scalars(
                    select(ProjectionRow.id).where(
                        ProjectionRow.project_id == str(event["project_id"]),
                        ProjectionRow.embedding_id == str(event["embedding_id"]),
                    )
                )
            ).all()
        for projection_id in ids:
            await self._remove(projection_id)
        if event.get("embedding"):
            await asyncio.to_thread(self._vector_files.forget, str(event["embedding"]))

    async def cancel(self, identity: Identity, name: str) -> ProjectionRow:
        row = await self.readable(identity, name, ingest_pb2.ROLE_EDITOR)
        cancelled = await cancel_job(self._sessions, ProjectionRow, row.id)
        if cancelled is None:
            raise NotFound(f"{name} not found")
        await self.publish(cancelled)
        return cancelled

    async def watch(self, identity: Identity, name: str) -> AsyncGenerator[projection_pb2.Projection, None]:
        row = await self.readable(identity, name)
        parts = names.parse(name, PROJECTION_PATTERN)

        async def load() -> projection_pb2.Projection:
            return to_proto(await self.load(parts, name))

        def decode(data: bytes) -> projection_pb2.Projection:
            return projection_pb2.Projection.FromString(data)

        async for message in watch(self._bus, KIND, row.id, load, decode, lambda m: m.job):
            yield message

