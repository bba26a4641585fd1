"""Projections: the records, the rules (who may do what, which parameters make sense),
the job that makes a map, and the reads a map serves (points, clusters, search,
neighbours). No gRPC here; other services are reached through `Sources`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from embedviz.v1 import embedding_pb2, ingest_pb2, job_pb2, projection_pb2
from services.common import names
from services.common.app import Deps
from services.common.auth import Identity
from services.common.clients import JobCredentials
from services.common import paging
from services.common.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.common.events import crash_message
from services.common.jobs import (
    CANCELLED,
    PENDING,
    SUCCEEDED,
    TERMINAL,
    JobCancelled,
    JobGone,
    JobReporter,
    cancel_job,
    job_to_proto,
    timestamp,
    watch,
)
from services.projection import exports, fits, maps
from services.projection.models import ClusterRow, ProjectionRow
from services.projection.sources import EmbeddingInfo, Sources
from services.projection.vectors import Allocate, VectorFiles

log = logging.getLogger(__name__)

KIND = "projection"
EMBEDDING_PATTERN = "projects/{project}/datasets/{dataset}/embeddings/{embedding}"
PROJECTION_PATTERN = EMBEDDING_PATTERN + "/projections/{projection}"
MIN_ROWS = 4
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
HEARTBEAT_SECONDS = 2.0
STAGE_POLL_SECONDS = 0.25
CANCEL_POLL_SECONDS = 0.5  # how often a job in a fit reads its state: a cancel kills the fit within this
# Follow-up projections (Embedding.project_when_done) get a stable id from the embedding's
# name, so an event delivered twice makes one projection.
FOLLOW_UP_NAMESPACE = uuid.UUID("6f1b7c1e-43a5-4f0e-9a51-1a2f6b0c9d7e")

T = TypeVar("T")

_METHOD_NAMES = {
    projection_pb2.PROJECTION_METHOD_UNSPECIFIED: maps.UMAP,
    projection_pb2.PROJECTION_METHOD_UMAP: maps.UMAP,
    projection_pb2.PROJECTION_METHOD_PCA: maps.PCA,
    projection_pb2.PROJECTION_METHOD_TSNE: maps.TSNE,
}
_ALGORITHM_NAMES = {
    projection_pb2.CLUSTER_ALGORITHM_UNSPECIFIED: maps.KMEANS,
    projection_pb2.CLUSTER_ALGORITHM_KMEANS: maps.KMEANS,
    projection_pb2.CLUSTER_ALGORITHM_HDBSCAN: maps.HDBSCAN,
    projection_pb2.CLUSTER_ALGORITHM_NONE: maps.NONE,
}
_SPACE_NAMES = {
    projection_pb2.CLUSTER_SPACE_UNSPECIFIED: maps.PROJECTED,
    projection_pb2.CLUSTER_SPACE_PROJECTED: maps.PROJECTED,
    projection_pb2.CLUSTER_SPACE_EMBEDDING: maps.EMBEDDING,
}


def points_key(projection_id: str) -> str:
    return f"projections/{projection_id}/points.arrow"


def embedding_name(row: ProjectionRow) -> str:
    return f"projects/{row.project_id}/datasets/{row.dataset_id}/embeddings/{row.embedding_id}"


def dataset_name(row: ProjectionRow) -> str:
    return f"projects/{row.project_id}/datasets/{row.dataset_id}"


def projection_name(row: ProjectionRow) -> str:
    return f"{embedding_name(row)}/projections/{row.id}"


def to_proto(row: ProjectionRow) -> projection_pb2.Projection:
    p = row.params or {}
    message = projection_pb2.Projection(
        name=projection_name(row),
        method=projection_pb2.ProjectionMethod.Value(f"PROJECTION_METHOD_{row.method}"),
        dimensions=row.dimensions,
        seed=row.seed or 0,
        umap=projection_pb2.UmapParams(
            n_neighbors=p.get("n_neighbors", 15), min_dist=p.get("min_dist", 0.1), metric=p.get("metric", "cosine")
        ),
        tsne=projection_pb2.TsneParams(perplexity=p.get("perplexity", 30.0)),
        clustering=projection_pb2.ClusterParams(
            algorithm=projection_pb2.ClusterAlgorithm.Value(f"CLUSTER_ALGORITHM_{p.get('algorithm', maps.KMEANS)}"),
            k=p.get("k", 0),
            min_cluster_size=p.get("min_cluster_size", 10),
            space=projection_pb2.ClusterSpace.Value(f"CLUSTER_SPACE_{p.get('space', maps.PROJECTED)}"),
        ),
        point_count=row.point_count or 0,
        cluster_count=row.cluster_count or 0,
        job=job_to_proto(row),
        label_column=str(p.get("label_column", "")),
    )
    q = row.quality or {}
    if q:
        message.fitted_rows = int(q.get("fitted_rows", 0))
        message.pre_reduction_dimensions = int(q.get("pre_reduction_dimensions", 0))
        message.quality.CopyFrom(
            projection_pb2.ProjectionQuality(
                trustworthiness=float(q.get("trustworthiness", 0.0)),
                sample_rows=int(q.get("sample_rows", 0)),
                neighbors=int(q.get("neighbours", 0)),
                label_agreement=float(q.get("label_agreement", -1.0)),
                shuffled_label_agreement=float(q.get("shuffled_label_agreement", -1.0)),
                labelled_rows=int(q.get("labelled_rows", 0)),
            )
        )
    created = timestamp(row.create_time)
    if created is not None:
        message.create_time.CopyFrom(created)
    return message


def cluster_to_proto(row: ClusterRow) -> projection_pb2.Cluster:
    return projection_pb2.Cluster(
        id=row.cluster_id, label=row.label, size=row.size, centroid=list(row.centroid), terms=list(row.terms)
    )


def map_params(spec: projection_pb2.Projection, rows: int) -> maps.MapParams:
    """The request's parameters with defaults filled in, or INVALID_ARGUMENT saying what
    to change. `rows` is the embedding's row count."""
    method = _METHOD_NAMES.get(spec.method)
    if method is None:
        raise InvalidArgument(f"unknown projection method {spec.method}; use UMAP, PCA or TSNE")
    dimensions = spec.dimensions or 2
    if dimensions not in (2, 3):
        raise InvalidArgument(f"dimensions is {spec.dimensions}; a map has 2 or 3 dimensions")
    if rows < MIN_ROWS:
        raise FailedPrecondition(f"the embedding has {rows} rows; a map needs at least {MIN_ROWS}")
    n_neighbors = spec.umap.n_neighbors
    if n_neighbors < 0 or n_neighbors == 1:
        raise InvalidArgument(f"n_neighbors is {n_neighbors}; use 2 or more")
    if method == maps.UMAP and n_neighbors and n_neighbors >= rows:
        raise InvalidArgument(
            f"n_neighbors is {n_neighbors} but the embedding has {rows} rows; use at most {rows - 1}"
        )
    # proto3 has no presence for scalars: 0 means "the default"
    if not 0.0 <= spec.umap.min_dist <= 1.0:
        raise InvalidArgument(f"min_dist is {spec.umap.min_dist:g}; use a value from 0 to 1")
    min_dist = spec.umap.min_dist or 0.1
    metric = spec.umap.metric or "cosine"
    if metric not in maps.UMAP_METRICS:
        raise InvalidArgument(f"metric '{metric}' is not supported; use one of: {', '.join(maps.UMAP_METRICS)}")
    if spec.HasField("tsne") and spec.tsne.perplexity <= 0:
        raise InvalidArgument(f"perplexity is {spec.tsne.perplexity:g}; use a value above 0 (typically 5 to 50)")
    perplexity = spec.tsne.perplexity or 30.0
    algorithm = _ALGORITHM_NAMES.get(spec.clustering.algorithm)
    if algorithm is None:
        raise InvalidArgument(f"unknown clustering algorithm {spec.clustering.algorithm}; use KMEANS, HDBSCAN or NONE")
    space = _SPACE_NAMES.get(spec.clustering.space)
    if space is None:
        raise InvalidArgument(f"unknown cluster space {spec.clustering.space}; use PROJECTED or EMBEDDING")
    k = spec.clustering.k
    if k < 0 or (k and algorithm == maps.KMEANS and k < 2):
        raise InvalidArgument(f"k is {k}; use 2 or more")
    if algorithm == maps.KMEANS and k > rows:
        raise InvalidArgument(f"k is {k} but the embedding has {rows} rows; use at most {rows}")
    min_cluster_size = spec.clustering.min_cluster_size or 10
    if spec.clustering.min_cluster_size and algorithm == maps.HDBSCAN:
        if min_cluster_size < 2:
            raise InvalidArgument(f"min_cluster_size is {min_cluster_size}; use 2 or more")
        if min_cluster_size > rows:
            raise InvalidArgument(
                f"min_cluster_size is {min_cluster_size} but the embedding has {rows} rows; use at most {rows}"
            )
    return maps.MapParams(
        method=method,
        dimensions=dimensions,
        seed=spec.seed or None,
        n_neighbors=n_neighbors or 15,
        min_dist=float(min_dist),
        metric=metric,
        perplexity=float(perplexity),
        algorithm=algorithm,
        k=k or (maps.default_k(rows) if algorithm == maps.KMEANS else 0),
        min_cluster_size=min_cluster_size,
        space=space,
        fit_rows=maps.fit_rows_setting(),
        pca_dims=maps.pca_dims_setting(),
        pca_min_rows=maps.pca_min_rows_setting(),
    )


def follow_up_spec(rows: int) -> projection_pb2.Projection:
    """The projection made for an embedding created with project_when_done: UMAP 2-D with
    HDBSCAN clusters sized to the data (0.5 % of the rows, from 10 to 500)."""
    size = max(10, min(500, round(rows * 0.005)))
    return projection_pb2.Projection(
        method=projection_pb2.PROJECTION_METHOD_UMAP,
        dimensions=2,
        clustering=projection_pb2.ClusterParams(
            algorithm=projection_pb2.CLUSTER_ALGORITHM_HDBSCAN, min_cluster_size=min(size, max(2, rows))
        ),
    )


def _params_json(params: maps.MapParams) -> dict[str, Any]:
    return {
        "n_neighbors": params.n_neighbors,
        "min_dist": params.min_dist,
        "metric": params.metric,
        "perplexity": params.perplexity,
        "algorithm": params.algorithm,
        "k": params.k,
        "min_cluster_size": params.min_cluster_size,
        "space": params.space,
        "fit_rows": params.fit_rows,
        "pca_dims": params.pca_dims,
        "pca_min_rows": params.pca_min_rows,
    }


def params_of(row: ProjectionRow) -> maps.MapParams:
    p = row.params or {}
    return maps.MapParams(
        method=row.method,
        dimensions=row.dimensions,
        seed=row.seed or None,
        n_neighbors=int(p.get("n_neighbors", 15)),
        min_dist=float(p.get("min_dist", 0.1)),
        metric=str(p.get("metric", "cosine")),
        perplexity=float(p.get("perplexity", 30.0)),
        algorithm=str(p.get("algorithm", maps.KMEANS)),
        k=int(p.get("k", 0)),
        min_cluster_size=int(p.get("min_cluster_size", 10)),
        space=str(p.get("space", maps.PROJECTED)),
        fit_rows=int(p.get("fit_rows", maps.DEFAULT_FIT_ROWS)),
        pca_dims=int(p.get("pca_dims", maps.DEFAULT_PCA_DIMS)),
        pca_min_rows=int(p.get("pca_min_rows", maps.DEFAULT_PCA_MIN_ROWS)),
    )


def _page_token(offset: int) -> str:
    return paging.encode({"o": offset})


def _offset(token: str) -> int:
    value = paging.decode(token)
    if value is None:
        return 0
    if not isinstance(value, dict) or not isinstance(value.get("o"), int) or value["o"] < 0:
        raise InvalidArgument("page_token is not a token this service gave out; start again without it")
    return int(value["o"])


class Projections:
    def __init__(self, deps: Deps, sources: Sources, fit_pool: fits.Fits, vector_files: VectorFiles) -> None:
        """`fit_pool`: the child processes that make maps (only used where workers run);
        `vector_files`: the memory-mapped unit vectors behind search and neighbours."""
        self._deps = deps
        self._sessions = deps.db.sessions
        self._sources = sources
        self._fits = fit_pool
        self._vector_files = vector_files

    # --- records and rules -----------------------------------------------------------------

    async def _publish(self, row: ProjectionRow) -> None:
        await self._deps.bus.publish_job_state(KIND, row.id, to_proto(row).SerializeToString())

    async def _authorise(self, identity: Identity, name: str, pattern: str, minimum: int) -> dict[str, str]:
        parts = names.parse(name, pattern)
        await self._deps.access.require(identity, f"projects/{parts['project']}", minimum, name)
        return parts

    async def _load(self, parts: dict[str, str], name: str) -> ProjectionRow:
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

    async def _readable(self, identity: Identity, name: str, minimum: int = ingest_pb2.ROLE_VIEWER) -> ProjectionRow:
        parts = await self._authorise(identity, name, PROJECTION_PATTERN, minimum)
        return await self._load(parts, name)

    async def _succeeded(self, identity: Identity, name: str) -> ProjectionRow:
        row = await self._readable(identity, name)
        if row.state != SUCCEEDED:
            raise FailedPrecondition(
                f"{name} is {row.state.lower()}, not ready yet; wait until it has succeeded (WatchProjection)"
            )
        return row

    async def create(
        self, identity: Identity, parent: str, spec: projection_pb2.Projection, projection_id: str = ""
    ) -> ProjectionRow:
        parts = await self._authorise(identity, parent, EMBEDDING_PATTERN, ingest_pb2.ROLE_EDITOR)
        embedding = await self._sources.get_embedding(identity, parent)
        if not embedding.succeeded:
            raise FailedPrecondition(
                f"{parent} is {embedding.state_name}; a projection needs a finished embedding (WatchEmbedding)"
            )
        params = map_params(spec, embedding.row_count)
        label_column = spec.label_column.strip()
        if label_column:
            columns = await self._sources.dataset_columns(identity, f"projects/{parts['project']}/datasets/{parts['dataset']}")
            if label_column not in columns:
                raise InvalidArgument(
                    f"label_column '{label_column}' not found; the dataset has: {', '.join(columns)}"
                )
        stored = _params_json(params)
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
            await session.commit()
        await self._publish(row)
        await self._deps.bus.enqueue(KIND, {"id": row.id, "owner": identity.user})
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
        credentials = self._deps.delegated.for_job(embedding.creator)
        try:
            return await credentials.call(
                lambda identity: self.create(identity, embedding.name, follow_up_spec(int(embedding.row_count)), projection_id),
                f"starting the projection that follows {embedding.name}",
            )
        except IntegrityError:
            return None  # another replica made it a moment ago
        except (NotFound, PermissionDenied, FailedPrecondition, InvalidArgument) as exc:
            log.info("no follow-up projection for %s: %s", embedding.name, exc.message)
            return None

    async def get(self, identity: Identity, name: str) -> ProjectionRow:
        return await self._readable(identity, name)

    async def list(
        self, identity: Identity, parent: str, page_size: int, page_token: str
    ) -> tuple[list[ProjectionRow], str]:
        parts = await self._authorise(identity, parent, EMBEDDING_PATTERN, ingest_pb2.ROLE_VIEWER)
        if page_size < 0:
            raise InvalidArgument(f"page_size is {page_size}; use 0 (the default, {DEFAULT_PAGE_SIZE}) or more")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        offset = _offset(page_token)
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
        return rows[:size], _page_token(offset + size) if more else ""

    async def delete(self, identity: Identity, name: str) -> None:
        row = await self._readable(identity, name, ingest_pb2.ROLE_EDITOR)
        await self._remove(row.id)

    async def _remove(self, projection_id: str) -> None:
        async with self._sessions() as session:
            await session.execute(delete(ClusterRow).where(ClusterRow.projection_id == projection_id))
            await session.execute(delete(ProjectionRow).where(ProjectionRow.id == projection_id))
            await session.commit()
        await asyncio.to_thread(self._deps.blobs.delete_dir, f"projections/{projection_id}")
        await self._deps.bus.delete_events(KIND, projection_id)

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
        row = await self._readable(identity, name, ingest_pb2.ROLE_EDITOR)
        cancelled = await cancel_job(self._sessions, ProjectionRow, row.id)
        if cancelled is None:
            raise NotFound(f"{name} not found")
        await self._publish(cancelled)
        return cancelled

    async def watch(self, identity: Identity, name: str) -> AsyncIterator[projection_pb2.Projection]:
        row = await self._readable(identity, name)
        parts = names.parse(name, PROJECTION_PATTERN)

        async def load() -> projection_pb2.Projection:
            return to_proto(await self._load(parts, name))

        def decode(data: bytes) -> projection_pb2.Projection:
            return projection_pb2.Projection.FromString(data)

        async for message in watch(self._deps.bus, KIND, row.id, load, decode, lambda m: m.job):
            yield message

    # --- reads of a finished map ---------------------------------------------------------

    async def points(self, identity: Identity, name: str) -> maps.Points:
        row = await self._succeeded(identity, name)
        return await asyncio.to_thread(self._read_points, row.id)

    def _read_points(self, projection_id: str) -> maps.Points:
        import pyarrow as pa

        key = points_key(projection_id)
        local = self._deps.blobs.local_path(key)
        try:
            source = pa.memory_map(local) if local else self._deps.blobs.open_input_file(key)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"the points of projection {projection_id} are missing; create the projection again"
            ) from None
        with source:
            points = maps.read_points(source)
        return points

    async def clusters(self, identity: Identity, name: str) -> list[ClusterRow]:
        row = await self._readable(identity, name)
        async with self._sessions() as session:
            result = await session.scalars(
                select(ClusterRow).where(ClusterRow.projection_id == row.id).order_by(ClusterRow.cluster_id)
            )
            clusters = list(result.all())
        # by id, noise (-1) last
        return sorted(clusters, key=lambda c: (c.cluster_id == maps.NOISE, c.cluster_id))

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
        row = await self._succeeded(identity, name)
        if column:
            found = self._sources.rows_containing(
                identity, dataset_name(row), column, query, limit, int(row.point_count)
            )
            return [(index, 1.0) async for index in found]
        embedding, vectors = await self._unit_vectors(identity, row)
        vector = await self._sources.embed_query(identity, embedding.model, query)
        if vector.shape[0] != vectors.shape[1]:
            raise FailedPrecondition(
                f"the query vector has {vector.shape[0]} dimensions but {embedding.name} has "
                f"{vectors.shape[1]}; the embedding's model may be gone"
            )
        return await asyncio.to_thread(maps.nearest, vectors, vector, limit)

    async def neighbors(self, identity: Identity, name: str, row_index: int, limit: int) -> list[tuple[int, float]]:
        if limit < 0:
            raise InvalidArgument(f"limit is {limit}; use 1 to 100")
        limit = min(limit or 10, 100)
        row = await self._succeeded(identity, name)
        if not 0 <= row_index < row.point_count:
            raise InvalidArgument(
                f"row_index is {row_index} but the map has {row.point_count} points; use 0 to {row.point_count - 1}"
            )
        _, vectors = await self._unit_vectors(identity, row)
        return await asyncio.to_thread(maps.nearest, vectors, vectors[row_index], limit, row_index)

    async def export(
        self, identity: Identity, name: str, file_format: str, columns: list[str], row_indexes: list[int]
    ) -> AsyncIterator[bytes]:
        """The map's rows as a file in chunks: `row`, x, y (, z), `cluster`, `label`, then the
        chosen dataset columns; all rows, or the selected ones in ascending row order."""
        if file_format not in exports.CONTENT_TYPES:
            raise InvalidArgument(f"format {file_format} is not one of: {', '.join(exports.CONTENT_TYPES)}")
        row = await self._succeeded(identity, name)
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
        points = await asyncio.to_thread(self._read_points, row.id)
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

    # --- the job -----------------------------------------------------------------------------

    async def run_job(self, payload: dict[str, Any], delivery: int) -> None:
        projection_id = str(payload.get("id", ""))
        owner = str(payload.get("owner", ""))
        async with self._sessions() as session:
            row = await session.get(ProjectionRow, projection_id)
        if row is None or row.state in TERMINAL:
            return  # deleted or already finished (a redelivery after the ack was lost)
        reporter: JobReporter[ProjectionRow] = JobReporter(
            self._sessions, ProjectionRow, projection_id, self._publish
        )
        try:
            await self._make_map(row, owner or row.owner, reporter)
        except (JobCancelled, JobGone):
            log.info("projection %s stopped: cancelled or deleted", projection_id)
            await asyncio.to_thread(self._remove_blobs, projection_id)
        except fits.FitsStopping:
            # this process is stopping and killed the fit: the queue hands the job out again at once
            log.info("projection %s handed back: the service is stopping", projection_id)
            raise asyncio.CancelledError() from None
        except fits.FitDied as exc:
            log.error("projection %s failed: %s", projection_id, exc)
            await asyncio.to_thread(self._remove_blobs, projection_id)
            await reporter.fail(f"the map could not be made: {exc}; try again, and if it fails the same way, the worker needs more memory for this many rows")
        except DomainError as exc:
            await asyncio.to_thread(self._remove_blobs, projection_id)
            if exc.code.name == "UNAVAILABLE" and delivery < 5:
                raise  # a service this job needs is down: let the queue hand it out again
            await reporter.fail(exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("projection %s failed", projection_id)
            await asyncio.to_thread(self._remove_blobs, projection_id)
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            await reporter.fail(f"the projection failed: {details or type(exc).__name__}")

    async def give_up(self, payload: dict[str, Any], attempts: int, last_error: str | None) -> None:
        """The map's last delivery (services/common/events.py): its worker died or failed on
        every attempt, so the projection ends FAILED and leaves nothing behind."""
        projection_id = str(payload.get("id", ""))
        async with self._sessions() as session:
            row = await session.get(ProjectionRow, projection_id)
        if row is None or row.state in TERMINAL:
            return
        await asyncio.to_thread(self._remove_blobs, projection_id)
        reporter: JobReporter[ProjectionRow] = JobReporter(self._sessions, ProjectionRow, projection_id, self._publish)
        await reporter.fail(crash_message("making this map", attempts, last_error))

    def _remove_blobs(self, projection_id: str) -> None:
        with contextlib.suppress(Exception):
            self._deps.blobs.delete_dir(f"projections/{projection_id}")

    async def _make_map(self, row: ProjectionRow, owner: str, reporter: JobReporter[ProjectionRow]) -> None:
        # Held for the whole job: each call gets a token that is fresh enough (a map can
        # take longer than any token lives).
        credentials = self._deps.delegated.for_job(owner)
        params = params_of(row)
        await reporter.start("loading vectors", total=row.total or 0)
        embedding = await credentials.call(
            lambda identity: self._sources.get_embedding(identity, embedding_name(row)), f"reading {embedding_name(row)}"
        )
        if not embedding.succeeded:
            raise FailedPrecondition(f"{embedding.name} is {embedding.state_name}; it must have succeeded")
        rows = int(embedding.row_count)
        await reporter.progress(0, total=rows, force=True)
        # The CPU-heavy stages run in this worker slot's child process, which a cancel kills.
        async with self._fits.session(row.id) as fit:
            await self._fit_map(row, embedding, params, credentials, reporter, fit)

    async def _fit_map(
        self,
        row: ProjectionRow,
        embedding: EmbeddingInfo,
        params: maps.MapParams,
        credentials: JobCredentials,
        reporter: JobReporter[ProjectionRow],
        fit: fits.FitSession,
    ) -> None:
        rows = int(embedding.row_count)
        # straight into a file of the fit's folder: the child maps it, nobody holds a copy
        vectors = await credentials.call(
            lambda identity: self._sources.load_vectors(
                identity, embedding, on_chunk=lambda done: reporter.progress(done, total=rows), allocate=fit.allocate
            ),
            f"reading the vectors of {embedding.name}",
        )
        if rows < MIN_ROWS:
            raise FailedPrecondition(f"the embedding has {rows} rows; a map needs at least {MIN_ROWS}")
        if params.method == maps.UMAP:
            params = replace(params, n_neighbors=max(2, min(params.n_neighbors, rows - 1)))
        if params.algorithm == maps.KMEANS:
            params = replace(params, k=min(params.k or maps.default_k(rows), rows))

        first = maps.STAGE_PRE_REDUCTION if params.method != maps.PCA else "pca"
        status = StageStatus(first, 0, rows)
        await reporter.progress(0, total=rows, stage=first)
        points = await self._in_child(fit, reporter, status, row.id, maps.reduce, vectors, params, progress=True)
        sample = maps.fit_sample(rows, params)
        fitted_rows = rows if sample is None else int(sample.shape[0])
        pre_reduced = maps.pre_reduce_dims(vectors.shape, params, fitted_rows)

        status.update("clustering", 0, rows)
        await reporter.progress(0, total=rows, stage="clustering")
        labels = await self._in_child(fit, reporter, status, row.id, maps.cluster, points, vectors, params)
        summaries = maps.summarise(points, labels)

        status.update("quality", 0, rows)
        await reporter.progress(0, total=rows, stage="quality")
        label_column = str((row.params or {}).get("label_column", ""))
        truth = (
            await credentials.call(
                lambda identity: self._sources.load_texts(identity, dataset_name(row), [label_column], rows),
                f"reading the labels of {dataset_name(row)}",
            )
            if label_column
            else None
        )
        quality = await self._in_child(fit, reporter, status, row.id, maps.measure, vectors, points, params, truth)
        quality.update(fitted_rows=fitted_rows, pre_reduction_dimensions=pre_reduced)
        del vectors

        status.update("labelling", 0, rows)
        await reporter.progress(0, total=rows, stage="labelling")
        columns = embedding.text_columns
        texts = (
            await credentials.call(
                lambda identity: self._sources.load_texts(identity, dataset_name(row), columns, rows),
                f"reading the texts of {dataset_name(row)}",
            )
            if columns
            else [""] * rows
        )
        terms = await self._in_child(fit, reporter, status, row.id, maps.cluster_terms, texts, labels)
        for summary in summaries:
            summary.terms = terms.get(summary.id, [])
            summary.label = maps.label_of(summary.terms, summary.id)

        await reporter.progress(rows, total=rows, stage="saving", force=True)
        await asyncio.to_thread(self._write_points, row.id, points, labels)
        async with self._sessions() as session:
            await session.execute(delete(ClusterRow).where(ClusterRow.projection_id == row.id))
            session.add_all(
                ClusterRow(
                    projection_id=row.id,
                    cluster_id=s.id,
                    label=s.label,
                    size=s.size,
                    centroid=s.centroid,
                    terms=s.terms,
                )
                for s in summaries
            )
            await session.commit()
        cluster_count = sum(1 for s in summaries if s.id != maps.NOISE)
        await reporter.succeed(
            point_count=rows, cluster_count=cluster_count, done=rows, total=rows, quality=quality
        )

    def _write_points(self, projection_id: str, points: np.ndarray, labels: np.ndarray) -> None:
        key = points_key(projection_id)
        partial = key + ".part"
        table = maps.points_table(points, labels)
        with self._deps.blobs.open_output(partial) as sink:
            maps.write_points(sink, table)
        self._deps.blobs.move(partial, key)

    async def _in_child(
        self,
        fit: fits.FitSession,
        reporter: JobReporter[ProjectionRow],
        status: StageStatus,
        projection_id: str,
        fn: Callable[..., T],
        *args: Any,
        progress: bool = False,
    ) -> T:
        """Run CPU work in the job's child process (`progress`: `fn` takes `on_stage`);
        meanwhile publish the stage it reports, keep the job's record fresh, and read the
        job's state every CANCEL_POLL_SECONDS: a cancelled or deleted job kills the child
        at once, so its CPU use stops."""
        task = asyncio.ensure_future(fit.call(fn, *args, on_stage=status.update if progress else None))
        shown = status.stage
        last = checked = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=STAGE_POLL_SECONDS)
                if done:
                    try:
                        return task.result()
                    except fits.FitDied as exc:
                        raise fits.FitDied(exc.returncode, status.stage) from None
                stage, count, total = status.read()
                now = time.monotonic()
                if stage != shown:
                    shown, last = stage, now
                    await reporter.progress(count, total=total, stage=stage)
                elif now - last >= HEARTBEAT_SECONDS:
                    last = now
                    await reporter.progress(count, total=total, force=True)
                if now - checked >= CANCEL_POLL_SECONDS:
                    checked = now
                    await self._still_wanted(projection_id)
        finally:
            if not task.done():
                fit.kill()
                task.cancel()

    async def _still_wanted(self, projection_id: str) -> None:
        """JobCancelled or JobGone when the projection was cancelled or deleted."""
        async with self._sessions() as session:
            state = await session.scalar(select(ProjectionRow.state).where(ProjectionRow.id == projection_id))
        if state is None:
            raise JobGone(f"projection {projection_id} no longer exists")
        if state == CANCELLED:
            raise JobCancelled()


class StageStatus:
    """The stage a fit is in, as the child process last reported it."""

    def __init__(self, stage: str, done: int, total: int) -> None:
        self._lock = threading.Lock()
        self.stage, self.done, self.total = stage, done, total

    def update(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self.stage, self.done, self.total = stage, done, total

    def read(self) -> tuple[str, int, int]:
        with self._lock:
            return self.stage, self.done, self.total
