"""Ingest's part of the reconciler (services/common/reconcile.py): the blob store's
`datasets/{id}` folders and `uploads/{id}.part` files that no row owns (on S3 also the
`uploads/{id}.chunks` folders of chunks)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.blobs import BlobStore
from services.common.reconcile import Reconciler, ReconcileSettings, remove_blobs_without_rows
from services.ingest.models import Dataset, Upload


def reconciler(sessions: async_sessionmaker[AsyncSession], blobs: BlobStore, settings: ReconcileSettings) -> Reconciler:
    async def dataset_files() -> int:
        return await remove_blobs_without_rows(sessions, blobs, "datasets", Dataset.id, settings.grace)

    async def upload_files() -> int:
        return await remove_blobs_without_rows(sessions, blobs, "uploads", Upload.id, settings.grace, ".part")

    async def upload_chunks() -> int:
        return await remove_blobs_without_rows(sessions, blobs, "uploads", Upload.id, settings.grace, ".chunks")

    sweeps = [dataset_files, upload_files] if blobs.local else [dataset_files, upload_files, upload_chunks]
    return Reconciler("ingest", sweeps, settings)
