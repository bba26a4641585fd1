"""What a map job has finished, kept so that a re-delivered job (its worker was killed)
resumes after it instead of starting over: each stage's arrays in the blob store under
projections/{id}/stages/, and the names of the finished stages, with their small results,
in the projection's row (`stages`). An array is recorded only once its file is whole."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.blobs import BlobStore
from services.common.db import through_outages
from services.projection.models import ProjectionRow

POINTS, LABELS, QUALITY, TERMS = "points", "labels", "quality", "terms"


def stages_prefix(projection_id: str) -> str:
    return f"projections/{projection_id}/stages"


class MapStages:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        projection_id: str,
        finished: dict[str, Any] | None,
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._id = projection_id
        self._finished: dict[str, Any] = dict(finished or {})

    @property
    def finished(self) -> list[str]:
        return list(self._finished)

    def has(self, stage: str) -> bool:
        return stage in self._finished

    def value(self, stage: str) -> Any:
        return self._finished[stage]

    def _key(self, stage: str) -> str:
        return f"{stages_prefix(self._id)}/{stage}.npy"

    async def array(self, stage: str) -> np.ndarray | None:
        """The array `stage` made, when it finished and its file is still there."""
        if stage not in self._finished:
            return None

        def read() -> np.ndarray | None:
            key = self._key(stage)
            if not self._blobs.exists(key):
                return None
            with self._blobs.open_input_file(key) as source:
                array: np.ndarray = np.load(io.BytesIO(source.read()), allow_pickle=False)
            return array

        return await asyncio.to_thread(read)

    async def keep_array(self, stage: str, array: np.ndarray) -> None:
        key = self._key(stage)

        def write() -> None:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            with self._blobs.open_output(key + ".part") as sink:
                sink.write(buffer.getvalue())
            self._blobs.move(key + ".part", key)

        await asyncio.to_thread(write)
        await self.keep(stage, True)

    async def keep(self, stage: str, value: Any) -> None:
        """Record `stage` as finished (with its small, JSON-able result)."""
        self._finished[stage] = value
        finished = dict(self._finished)

        async def write() -> None:
            async with self._sessions() as session:
                await session.execute(
                    update(ProjectionRow).where(ProjectionRow.id == self._id).values(stages=finished)
                )
                await session.commit()

        await through_outages(write, f"saving the finished stages of projection {self._id}")

    async def forget(self) -> None:
        """After the map is saved: the stages' files go (the record goes with the job's success)."""
        await asyncio.to_thread(self._blobs.delete_dir, stages_prefix(self._id))
