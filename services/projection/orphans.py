"""Projection's part of the reconciler (services/common/reconcile.py): projections of
embeddings (or datasets) whose deletion was announced, removed as the event handler does,
and `projections/{id}` folders that no row owns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.blobs import BlobStore
from services.common.events import EventBus
from services.common.reconcile import Reconciler, ReconcileSettings, deleted_ids, remove_blobs_without_rows
from services.projection.models import ProjectionRow

EMBEDDING_DELETED = "embedding-deleted"  # events.embedding-deleted.{embedding id}, embedding's
DATASET_DELETED = "dataset-deleted"  # events.dataset-deleted.{dataset id}, ingest's

# What removes an embedding's projections: Projections.remove_for_embedding, given the
# deletion event (or what of it matters: project_id, embedding_id).
RemoveForEmbedding = Callable[[dict[str, object]], Awaitable[None]]


def reconciler(
    sessions: async_sessionmaker[AsyncSession],
    bus: EventBus,
    blobs: BlobStore,
    remove_for_embedding: RemoveForEmbedding,
    settings: ReconcileSettings,
) -> Reconciler:
    async def projections_of_deleted_parents() -> int:
        embeddings = await deleted_ids(bus, EMBEDDING_DELETED)
        datasets = await deleted_ids(bus, DATASET_DELETED)
        if not embeddings and not datasets:
            return 0
        async with sessions() as session:
            rows = (
                await session.execute(
                    select(ProjectionRow.project_id, ProjectionRow.dataset_id, ProjectionRow.embedding_id)
                )
            ).all()
        orphans = [row for row in rows if row.embedding_id in embeddings or row.dataset_id in datasets]
        for project_id, embedding_id in {(row.project_id, row.embedding_id) for row in orphans}:
            await remove_for_embedding({"project_id": project_id, "embedding_id": embedding_id})
        return len(orphans)

    async def map_files() -> int:
        return await remove_blobs_without_rows(sessions, blobs, "projections", ProjectionRow.id, settings.grace)

    return Reconciler("projection", [projections_of_deleted_parents, map_files], settings)
