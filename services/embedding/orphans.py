"""Embedding's part of the reconciler (services/common/reconcile.py): embeddings of
datasets whose deletion ingest announced (removed as the event handler does, so their
projections go too), and `embeddings/{id}` folders that no row owns."""

from __future__ import annotations

from sqlalchemy import select

from services.common.reconcile import Reconciler, ReconcileSettings, deleted_ids, remove_blobs_without_rows
from services.embedding.embeddings import Embeddings
from services.embedding.models import EmbeddingRow

DATASET_DELETED = "dataset-deleted"  # events.dataset-deleted.{dataset id}, ingest's (services/ingest/deletions.py)


def reconciler(embeddings: Embeddings, settings: ReconcileSettings) -> Reconciler:
    sessions = embeddings.db.sessions

    async def embeddings_of_deleted_datasets() -> int:
        deleted = await deleted_ids(embeddings.bus, DATASET_DELETED)
        if not deleted:
            return 0
        async with sessions() as session:
            rows = (await session.execute(select(EmbeddingRow.project_id, EmbeddingRow.dataset_id))).all()
        orphans = [row for row in rows if row.dataset_id in deleted]
        for project_id, dataset_id in {(row.project_id, row.dataset_id) for row in orphans}:
            await embeddings.remove_for_dataset({"project_id": project_id, "dataset_id": dataset_id})
        return len(orphans)

    async def vector_files() -> int:
        return await remove_blobs_without_rows(
            sessions, embeddings.blobs, "embeddings", EmbeddingRow.id, settings.grace
        )

    return Reconciler("embedding", [embeddings_of_deleted_datasets, vector_files], settings)
