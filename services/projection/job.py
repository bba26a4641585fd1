"""The job that makes a map: load the vectors, reduce, cluster, measure, label, save the
points and clusters. The CPU-heavy stages run in the worker slot's child process
(fits.py), which a cancel or delete kills."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.blobs import BlobStore
from services.common.clients import DelegatedTokens, JobCredentials
from services.common.consumer import retryable
from services.common.errors import FailedPrecondition
from services.common.jobs import CANCELLED, TERMINAL, JobCancelled, JobGone, JobReporter
from services.common.runner import Job, JobKind
from services.projection import clusters, fits, labels, maps, progress, topics
from services.projection.models import ClusterRow, ProjectionRow
from services.projection.progress import MapProgress
from services.projection.rules import KIND, MIN_ROWS, dataset_name, embedding_name, params_of, points_key
from services.projection.sources import EmbeddingInfo, Sources
from services.projection.stages import LABELS, POINTS, QUALITY, TERMS, MapStages

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
STAGE_POLL_SECONDS = 0.25
CANCEL_POLL_SECONDS = 0.5  # how often a job in a fit reads its state: a cancel kills the fit within this

T = TypeVar("T")


def _retryable(exc: BaseException) -> bool:
    """Worth a later try: a neighbour away, also when its error comes as a gRPC status."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return retryable(exc)


class MapJobs:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        delegated: DelegatedTokens,
        sources: Sources,
        fit_pool: fits.Fits,
        publish: Callable[[ProjectionRow], Awaitable[None]],
    ) -> None:
        """`fit_pool`: the child processes that make maps; `publish`: announces a record's
        new state (ProjectionRecords.publish)."""
        self._sessions = sessions
        self._blobs = blobs
        self._delegated = delegated
        self._sources = sources
        self._fits = fit_pool
        self._publish = publish

    def map_job(self) -> JobKind[ProjectionRow]:
        """The map as a kind of job of the shared runner (services/common/runner.py)."""
        return JobKind(kind=KIND, model=ProjectionRow, publish=self._publish, run=self.run_job,
                       what="making this map", clean_up=self._clean_up, classify=_retryable)

    async def run_job(self, job: Job, reporter: JobReporter[ProjectionRow]) -> None:
        """Make the map. A neighbour that is away is retried by the runner; any other error
        ends the job FAILED there, with what was written removed."""
        async with self._sessions() as session:
            row = await session.get(ProjectionRow, job.id)
        if row is None or row.state in TERMINAL:
            return  # deleted or already finished (a redelivery after the ack was lost)
        try:
            await self._make_map(row, job.owner or row.owner, reporter)
        except (JobCancelled, JobGone):
            log.info("projection %s stopped: cancelled or deleted", job.id)
            await asyncio.to_thread(self._remove_blobs, job.id)
        except fits.FitsStopping:
            # this process is stopping and killed the fit: the queue hands the job out again at once
            log.info("projection %s handed back: the service is stopping", job.id)
            raise asyncio.CancelledError() from None
        except fits.FitDied as exc:
            log.error("projection %s failed: %s", job.id, exc)
            await asyncio.to_thread(self._remove_blobs, job.id)
            await reporter.fail(f"the map could not be made: {exc}; try again, and if it fails the same way, "
                                "the worker needs more memory for this many rows")

    async def _clean_up(self, projection_id: str, payload: dict[str, Any]) -> None:
        await asyncio.to_thread(self._remove_blobs, projection_id)

    def _remove_blobs(self, projection_id: str) -> None:
        with contextlib.suppress(Exception):
            self._blobs.delete_dir(f"projections/{projection_id}")

    async def _make_map(self, row: ProjectionRow, owner: str, reporter: JobReporter[ProjectionRow]) -> None:
        # Held for the whole job: each call gets a token that is fresh enough (a map can
        # take longer than any token lives).
        credentials = self._delegated.for_job(owner)
        params = params_of(row)
        await reporter.start("loading vectors", total=row.total or 0)
        embedding = await credentials.call(
            lambda identity: self._sources.get_embedding(identity, embedding_name(row)),
            f"reading {embedding_name(row)}",
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
        # one number for the whole job, through every stage (progress.py)
        plan = MapProgress(progress.stages_of(params, maps.fit_sample(rows, params) is not None), rows)
        # straight into a file of the fit's folder: the child maps it, nobody holds a copy
        vectors = await credentials.call(
            lambda identity: self._sources.load_vectors(
                identity,
                embedding,
                on_chunk=lambda done: reporter.progress(*plan.at(progress.LOADING, done, rows)),
                allocate=fit.allocate,
            ),
            f"reading the vectors of {embedding.name}",
        )
        if rows < MIN_ROWS:
            raise FailedPrecondition(f"the embedding has {rows} rows; a map needs at least {MIN_ROWS}")
        if params.method == maps.UMAP:
            params = replace(params, n_neighbors=max(2, min(params.n_neighbors, rows - 1)))
        if params.algorithm == maps.KMEANS:
            params = replace(params, k=min(params.k or maps.default_k(rows), rows))

        # what an earlier delivery of this job finished (its worker was killed) is not made again
        stages = MapStages(self._sessions, self._blobs, row.id, row.stages)
        if stages.finished:
            log.info("resuming projection %s: %s already made", row.id, ", ".join(stages.finished))
        first = maps.STAGE_PRE_REDUCTION if params.method != maps.PCA else "pca"
        status = StageStatus(first, 0, rows, plan)
        points = await stages.array(POINTS)
        if points is None:
            await reporter.progress(*plan.at(first), stage=first)
            points = await self._in_child(fit, reporter, status, row.id, maps.reduce, vectors, params, progress=True)
            await stages.keep_array(POINTS, points)
        sample = maps.fit_sample(rows, params)
        fitted_rows = rows if sample is None else int(sample.shape[0])
        pre_reduced = maps.pre_reduce_dims(vectors.shape, params, fitted_rows)

        cluster_ids = await stages.array(LABELS)
        if cluster_ids is None:
            status.update("clustering", 0, rows)
            await reporter.progress(*plan.at(progress.CLUSTERING), stage="clustering")
            cluster_ids = await self._in_child(
                fit, reporter, status, row.id, clusters.cluster, points, vectors, params, progress=True
            )
            await stages.keep_array(LABELS, cluster_ids)
        # the coarser levels, by merging these clusters by meaning (quick: one pass over the vectors)
        found: topics.Levels = await self._in_child(fit, reporter, status, row.id, topics.levels, vectors, cluster_ids)
        tree = found.tree

        if stages.has(QUALITY):
            quality = dict(stages.value(QUALITY))
        else:
            status.update("quality", 0, rows)
            await reporter.progress(*plan.at(progress.QUALITY), stage="quality")
            label_column = str((row.params or {}).get("label_column", ""))
            truth = (
                await credentials.call(
                    lambda identity: self._sources.load_texts(identity, dataset_name(row), [label_column], rows),
                    f"reading the labels of {dataset_name(row)}",
                )
                if label_column
                else None
            )
            quality = await self._in_child(
                fit, reporter, status, row.id, maps.measure, vectors, points, params, truth, cluster_ids
            )
            quality.update(fitted_rows=fitted_rows, pre_reduction_dimensions=pre_reduced)
            await stages.keep(QUALITY, quality)
        del vectors

        named: dict[int, topics.Named] | None = None
        if stages.has(TERMS):
            kept = stages.value(TERMS)
            if all(isinstance(v, dict) for v in kept.values()):
                named = {int(c): topics.Named(list(v["terms"]), str(v["label"])) for c, v in kept.items()}
        if named is None:
            status.update("labelling", 0, rows)
            await reporter.progress(*plan.at(progress.LABELLING), stage="labelling")
            columns = embedding.text_columns
            texts = (
                await credentials.call(
                    lambda identity: self._sources.load_texts(identity, dataset_name(row), columns, rows),
                    f"reading the texts of {dataset_name(row)}",
                )
                if columns
                else [""] * rows
            )
            candidates = await self._in_child(
                fit, reporter, status, row.id, topics.candidates_by_level, texts, tree, params.seed or 0
            )
            del texts
            term_vectors = await self._term_vectors(credentials, embedding, candidates)
            named = topics.choose(tree, candidates, found.centroids, term_vectors)
            await stages.keep(TERMS, {str(c): {"terms": n.terms, "label": n.label} for c, n in named.items()})
        summaries: list[tuple[int, int, maps.ClusterSummary]] = []  # (level, parent, summary)
        for level in range(tree.depth):
            for summary in maps.summarise(points, tree.rows_at(level)):
                if summary.id == maps.NOISE and level > 0:
                    continue  # noise is listed once, with the finest level
                summary.terms = named[summary.id].terms if summary.id in named else []
                summary.label = named[summary.id].label if summary.id in named else labels.label_from([], summary.id)
                summaries.append((level, tree.parent(summary.id), summary))  # noise has no parent (-1)

        await reporter.progress(*plan.at(progress.SAVING), stage="saving", force=True)
        await asyncio.to_thread(self._write_points, row.id, points, cluster_ids)
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
                    level=level,
                    parent_id=parent,
                )
                for level, parent, s in summaries
            )
            await session.commit()
        cluster_count = sum(1 for level, _, s in summaries if level == 0 and s.id != maps.NOISE)
        quality = {**quality, "cluster_levels": tree.depth}
        await reporter.succeed(
            point_count=rows, cluster_count=cluster_count, done=rows, total=rows, quality=quality, stages=None
        )
        await stages.forget()

    async def _term_vectors(
        self, credentials: JobCredentials, embedding: EmbeddingInfo, found: labels.Candidates
    ) -> dict[str, np.ndarray] | None:
        """The label candidates embedded with the map's own model, for re-ranking them by
        closeness to their cluster; None (c-TF-IDF order) when the model cannot be reached
        or the embedding has none."""
        terms = labels.candidate_terms(found)
        if not terms or not embedding.model:
            return None
        try:
            vectors = await credentials.call(
                lambda identity: self._sources.embed_texts(identity, embedding.model, terms),
                "embedding the label candidates",
            )
        except Exception as exc:  # labels without re-ranking are still labels
            log.warning("label candidates of %s not embedded (%s): c-TF-IDF order", embedding.name, exc)
            return None
        return labels.term_vectors_of(terms, vectors)

    def _write_points(self, projection_id: str, points: np.ndarray, labels: np.ndarray) -> None:
        key = points_key(projection_id)
        partial = key + ".part"
        table = maps.points_table(points, labels)
        with self._blobs.open_output(partial) as sink:
            maps.write_points(sink, table)
        self._blobs.move(partial, key)

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
        shown_done = -1
        last = checked = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=STAGE_POLL_SECONDS)
                if done:
                    try:
                        result: T = task.result()  # what `fn` returned in the child (unpickled, so untyped)
                        return result
                    except fits.FitDied as exc:
                        raise fits.FitDied(exc.returncode, status.stage) from None
                stage, job_done, job_total = status.job_progress()
                now = time.monotonic()
                if stage != shown:
                    shown, shown_done, last = stage, job_done, now
                    await reporter.progress(job_done, total=job_total, stage=stage)
                elif job_done != shown_done or now - last >= HEARTBEAT_SECONDS:
                    # within a stage (epochs, rows placed): throttled by the reporter, forced on a heartbeat
                    beat = now - last >= HEARTBEAT_SECONDS
                    shown_done, last = job_done, now if beat else last
                    await reporter.progress(job_done, total=job_total, force=beat)
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

    def __init__(self, stage: str, done: int, total: int, plan: MapProgress | None = None) -> None:
        self._lock = threading.Lock()
        self.stage, self.done, self.total = stage, done, total
        self._plan = plan

    def update(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self.stage, self.done, self.total = stage, done, total

    def read(self) -> tuple[str, int, int]:
        with self._lock:
            return self.stage, self.done, self.total

    def job_progress(self) -> tuple[str, int, int]:
        """(stage, the job's done, the job's total): the stage's count placed in the whole
        job by the plan; the stage's own count without one."""
        stage, done, total = self.read()
        if self._plan is None:
            return stage, done, total
        return (stage, *self._plan.at(stage, done, total))
