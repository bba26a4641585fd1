"""The reads a finished map serves: its points, clusters, search, neighbours and export.
Who may read is the records' rule (records.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.auth import Identity
from services.common.blobs import BlobStore
from services.common.errors import FailedPrecondition, InvalidArgument
from services.projection import exports, maps, text_search
from services.projection.models import ClusterRow, ProjectionRow
from services.projection.records import ProjectionRecords
from services.projection.rules import dataset_name, embedding_name, points_key
from services.projection.sources import EmbeddingInfo, Sources
from services.projection.vectors import Allocate, VectorFiles


class MapReads:
    def __init__(
        self,
        records: ProjectionRecords,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        sources: Sources,
        vector_files: VectorFiles,
    ) -> None:
        """`vector_files`: the memory-mapped unit vectors behind search and neighbours."""
        self._records = records
        self._sessions = sessions
        self._blobs = blobs
        self._sources = sources
        self._vector_files = vector_files

    async def points(self, identity: Identity, name: str) -> maps.Points:
        row = await self._records.succeeded(identity, name)
        return await asyncio.to_thread(self.read_points, row.id)

    def read_points(self, projection_id: str) -> maps.Points:
        try:
            source = self._blobs.open_mapped(points_key(projection_id))
        except FileNotFoundError:
            raise FailedPrecondition(
                f"the points of projection {projection_id} are missing; create the projection again"
            ) from None
        with source:
            points = maps.read_points(source)
        return points

    async def clusters(self, identity: Identity, name: str, level: int | None = 0) -> list[ClusterRow]:
        """The clusters of one level (None: every level, finest first), by id, noise last."""
        row = await self._records.readable(identity, name)
        levels = max(1, int((row.quality or {}).get("cluster_levels", 1)))
        if level is not None and not 0 <= level < levels:
            raise InvalidArgument(f"level is {level}; this map has levels 0 to {levels - 1}")
        query = select(ClusterRow).where(ClusterRow.projection_id == row.id)
        if level is not None:
            query = query.where(ClusterRow.level == level)
        async with self._sessions() as session:
            clusters = list((await session.scalars(query)).all())
        return sorted(clusters, key=lambda c: (c.level or 0, c.cluster_id == maps.NOISE, c.cluster_id))

    async def _unit_vectors(self, identity: Identity, row: ProjectionRow) -> tuple[EmbeddingInfo, np.ndarray]:
        """The embedding and its unit vectors (a read-only memory map; fetched into a local
        file the first time)."""
        embedding = await self._sources.get_embedding(identity, embedding_name(row))
        rows = int(row.point_count)

        async def load(allocate: Allocate) -> np.ndarray:
            return await self._sources.load_vectors(identity, embedding, limit=rows, allocate=allocate)

        return embedding, await self._vector_files.get(embedding.name, rows, load)

    async def search(
        self, identity: Identity, name: str, query: str, column: str, limit: int
    ) -> list[tuple[int, float]]:
        if not query.strip():
            raise InvalidArgument("query is empty; give a text to look for")
        if limit < 0:
            raise InvalidArgument(f"limit is {limit}; use 1 to 1000")
        limit = min(limit or 20, 1000)
        row = await self._records.succeeded(identity, name)
        if column:
            return await self._search_column(identity, row, column, query, limit)
        embedding, vectors = await self._unit_vectors(identity, row)
        if not embedding.model:
            raise FailedPrecondition(
                f"{embedding.name} holds vectors imported with the dataset: no model turns a text into a "
                "vector like them, so search by meaning is not available; search a column's text, or open "
                "a point and use its neighbours",
                "NO_MODEL",
            )
        vector = await self._sources.embed_query(identity, embedding.model, query)
        if vector.shape[0] != vectors.shape[1]:
            raise FailedPrecondition(
                f"the query vector has {vector.shape[0]} dimensions but {embedding.name} has "
                f"{vectors.shape[1]}; the embedding's model may be gone"
            )
        return await asyncio.to_thread(maps.nearest, vectors, vector, limit)

    async def _search_column(
        self, identity: Identity, row: ProjectionRow, column: str, query: str, limit: int
    ) -> list[tuple[int, float]]:
        """Rows of the map whose `column` holds `query`, best match first (text_search.py):
        the column streamed once from ingest, in bounded batches."""
        ranking = text_search.Ranking(limit)
        total = int(row.point_count)
        batches = self._sources.stream_rows(identity, dataset_name(row), [column], 0, total)
        try:
            async for first, table in batches:
                positions, scores = await asyncio.to_thread(text_search.scores, table.column(column), query)
                ranking.add(positions + first, scores)
        finally:
            await batches.aclose()
        return ranking.best()

    async def neighbors(self, identity: Identity, name: str, row_index: int, limit: int) -> list[tuple[int, float]]:
        if limit < 0:
            raise InvalidArgument(f"limit is {limit}; use 1 to 100")
        limit = min(limit or 10, 100)
        row = await self._records.succeeded(identity, name)
        if not 0 <= row_index < row.point_count:
            raise InvalidArgument(
                f"row_index is {row_index} but the map has {row.point_count} points; use 0 to {row.point_count - 1}"
            )
        _, vectors = await self._unit_vectors(identity, row)
        return await asyncio.to_thread(maps.nearest, vectors, vectors[row_index], limit, row_index)

    async def export(
        self, identity: Identity, name: str, file_format: str, columns: list[str], row_indexes: list[int]
    ) -> AsyncGenerator[bytes, None]:
        """The map's rows as a file in chunks: `row`, x, y (, z), `cluster`, `label`, then the
        chosen dataset columns; all rows, or the selected ones in ascending row order."""
        if file_format not in exports.CONTENT_TYPES:
            raise InvalidArgument(f"format {file_format} is not one of: {', '.join(exports.CONTENT_TYPES)}")
        row = await self._records.succeeded(identity, name)
        total = int(row.point_count)
        chosen = np.unique(np.asarray(row_indexes, dtype=np.int64)) if row_indexes else None
        if chosen is not None and (chosen[0] < 0 or chosen[-1] >= total):
            bad = int(chosen[0] if chosen[0] < 0 else chosen[-1])
            raise InvalidArgument(f"row index {bad} is not in the map; it has rows 0 to {total - 1}")
        wanted = list(dict.fromkeys(c for c in columns if c))
        if wanted:
            available = await self._sources.dataset_columns(identity, dataset_name(row))
            missing = [c for c in wanted if c not in available]
            if missing:
                raise InvalidArgument(
                    f"column '{missing[0]}' not found; the dataset has: {', '.join(available)}"
                )
            taken = [c for c in wanted if c in exports.RESERVED]
            if taken:
                raise InvalidArgument(
                    f"column '{taken[0]}' has the name of a column every export has "
                    f"({', '.join(exports.RESERVED)}); export without it"
                )
        points = await asyncio.to_thread(self.read_points, row.id)
        labels = {c.cluster_id: c.label for c in await self.clusters(identity, name)}
        writer = exports.ExportWriter(file_format, points, labels, wanted)
        ranges = exports.row_ranges(total, chosen)
        for start, stop in ranges:
            if wanted:
                batches = self._sources.stream_rows(identity, dataset_name(row), wanted, start, stop - start)
                try:
                    async for first, table in batches:
                        data = await asyncio.to_thread(writer.write, first, table, chosen)
                        if data:
                            yield data
                finally:
                    await batches.aclose()
            else:
                data = await asyncio.to_thread(writer.write, start, None, chosen, stop - start)
                if data:
                    yield data
        tail = await asyncio.to_thread(writer.close)
        if tail:
            yield tail

