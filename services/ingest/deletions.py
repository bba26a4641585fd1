"""The event that says a dataset is gone, alone or with its project, so the services
holding things made from it remove them: `events.dataset-deleted.{dataset id}` (JSON),
written to ingest's outbox in the transaction that deletes the dataset's row."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from services.common.jobs import utcnow
from services.common.outbox import Outbox

DELETED_KIND = "dataset-deleted"


async def announce_deleted(outbox: Outbox, session: AsyncSession, project_id: str, dataset_ids: Iterable[str]) -> None:
    for dataset_id in dataset_ids:
        payload = {
            "dataset": f"projects/{project_id}/datasets/{dataset_id}",
            "project_id": project_id,
            "dataset_id": dataset_id,
            "delete_time": utcnow().isoformat(),
        }
        await outbox.add_event(session, DELETED_KIND, dataset_id, payload)
