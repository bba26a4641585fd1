"""The embedding job, spread over any number of worker processes.

A job message (`{"id", "owner"}`) is planned: the rows to embed are cut into shards (row
ranges) kept in Postgres, and one message per shard goes on the same work queue. Any
worker takes a shard message, claims the shard with a lease, and embeds it window by
window (a few thousand rows: streamed from ingest, turned into texts, embedded in a worker
thread). Each window is a checkpoint: its vectors become a finished Arrow part file and
the shard's next row is committed. A worker killed mid-way leaves a shard whose lease
runs out; its message comes back from the queue to another worker, which resumes at the
checkpoint. The worker that finishes the last shard joins the parts, in row order, into
the vector file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar

import pyarrow as pa
from sqlalchemy import func, select

from services.common import telemetry
from services.common.auth import Identity
from services.common.clients import DelegatedTokens
from services.common.db import through_outages
from services.common.jobs import (
    CANCELLED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobCancelled,
    JobGone,
    JobReporter,
    utcnow,
)
from services.common.runner import Job, JobKind, JobRunner, JobSweeper, RunnerSettings
from services.embedding import imported
from services.embedding.embeddings import KIND, Embeddings
from services.embedding.encoder import Encoder
from services.embedding.models import EmbeddingRow, ShardRow
from services.embedding.settings import EmbeddingSettings
from services.embedding.texts import build_texts
from services.embedding.vectors import (
    assemble,
    embedding_prefix,
    part_key,
    parts_prefix,
    vectors_key,
    write_part,
)

log = logging.getLogger(__name__)

STAGE = "embedding"
DONE = "DONE"
T = TypeVar("T")


def _is_open(row: EmbeddingRow, payload: dict[str, Any]) -> bool:
    if row.state in TERMINAL:
        return False
    return "generation" not in payload or int(payload["generation"]) == row.generation


def _plan_message(payload: dict[str, Any]) -> dict[str, Any]:
    """What the sweeper queues again for a stalled embedding: its plan, which queues every
    shard not yet done (each resumes at its checkpoint)."""
    return {"id": payload.get("id", ""), "owner": payload.get("owner", "")}


class LeaseLost(Exception):
    """Another worker took this shard over (this one was too slow to renew its lease)."""


class Superseded(Exception):
    """The run this shard belongs to was given up (an extension was cancelled)."""


class EmbeddingWorker:
    def __init__(
        self, embeddings: Embeddings, delegated: DelegatedTokens, settings: EmbeddingSettings, slot: int = 0
    ) -> None:
        self.embeddings = embeddings
        self.delegated = delegated
        self.settings = settings
        self.name = f"{socket.gethostname()}/{os.getpid()}/{slot}"
        self.slot = slot
        self.runner_settings = RunnerSettings.from_env(ack_wait=settings.ack_wait)
        self.lease = timedelta(seconds=settings.ack_wait / 2)
        # One thread does this worker's heavy work, so its memory comes from one malloc
        # arena instead of one per pool thread (what keeps peak memory flat over a long job).
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{slot}")

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    # --- the job (services/common/runner.py runs it) ------------------------------------------

    def runner(self) -> JobRunner[EmbeddingRow]:
        """This worker's slot as the shared job runner's embedding kind: plan and shard
        messages of one job are worked on by many workers at once (parallel)."""
        kind: JobKind[EmbeddingRow] = JobKind(
            kind=KIND, model=EmbeddingRow, publish=self.embeddings.publish, run=self.run_job,
            what="embedding this dataset", clean_up=self._clean_up, is_open=_is_open, requeue=_plan_message,
            parallel=True,
        )
        return JobRunner(self.embeddings.db.sessions, self.embeddings.bus, kind, self.runner_settings, self.slot)

    async def sweep(self, stop: asyncio.Event) -> None:
        """The service's sweeper (one per process): stalled embeddings are queued again or failed."""
        await JobSweeper([self.runner()], self.runner_settings.sweep_every).run(stop)

    async def run(self, stop: asyncio.Event) -> None:
        """Take messages from the embedding work queue one at a time until `stop` is set."""
        log.info("embedding worker %s is taking work", self.name)
        await self.runner().run(stop)

    async def run_job(self, job: Job, reporter: JobReporter[EmbeddingRow]) -> None:
        """One plan or shard message. An error that may pass (a neighbour away) is retried by
        the runner, any other ends the job FAILED there, with the partial vectors removed."""
        async with self.embeddings.db.sessions() as session:
            row = await session.get(EmbeddingRow, job.id)
        if row is None or not _is_open(row, job.payload):
            return  # deleted or cancelled meanwhile, or a shard of a run that was given up
        owner = job.owner or row.owner
        try:
            if "shard" in job.payload:
                await self._shard(row, owner, int(job.payload["shard"]))
            else:
                await self._plan(row, owner)
        except LeaseLost:
            log.warning("embedding %s: another worker took over shard %s", job.id, job.payload.get("shard"))
        except (JobCancelled, JobGone, Superseded) as exc:
            log.info("embedding %s stopped: %s", job.id, type(exc).__name__)
            await asyncio.to_thread(self._remove_partial, row, isinstance(exc, Superseded))
        except asyncio.CancelledError:
            if "shard" in job.payload:
                await self._let_go(row, int(job.payload["shard"]))
            raise

    async def _let_go(self, row: EmbeddingRow, index: int) -> None:
        """This worker stops (SIGTERM, scale-down): its shard's message goes back to the queue,
        so its lease goes too, or the worker that gets the message next finds the shard still
        held, drops the message as a duplicate, and the shard waits for the sweeper."""
        try:
            async with self.embeddings.db.sessions() as session:
                shard = await session.get(ShardRow, (row.id, index), with_for_update=True)
                if shard is not None and shard.worker == self.name and shard.state != DONE:
                    shard.lease_until = None
                    await session.commit()
                    log.info("embedding %s shard %d: handed back at row %d", row.id, index, shard.done_row)
        except Exception as exc:  # PostgreSQL away: the lease runs out by itself
            log.warning("embedding %s shard %d: the lease could not be given back (%s)", row.id, index,
                        type(exc).__name__)

    async def _clean_up(self, job_id: str, payload: dict[str, Any]) -> None:
        async with self.embeddings.db.sessions() as session:
            row = await session.get(EmbeddingRow, job_id)
        if row is not None:
            await asyncio.to_thread(self._remove_partial, row, False)

    def _remove_partial(self, row: EmbeddingRow, run_only: bool) -> None:
        """Drop the parts of the run; of a first run that ended, everything."""
        blobs = self.embeddings.blobs
        try:
            if run_only or row.extend_from > 0:
                blobs.delete_dir(parts_prefix(row.id, row.generation))
            else:
                blobs.delete_dir(embedding_prefix(row.id))
        except OSError:
            log.warning("could not remove the partial vectors of %s", row.id, exc_info=True)

    # --- planning ---------------------------------------------------------------------------

    async def _plan(self, row: EmbeddingRow, owner: str) -> None:
        credentials = self.delegated.for_job(owner)
        dataset = await credentials.call(
            lambda identity: self.embeddings.datasets.get(identity, row.dataset), f"reading {row.dataset}"
        )
        total = dataset.row_count
        async with self.embeddings.db.sessions() as session:
            current = await session.get(EmbeddingRow, row.id, with_for_update=True)
            if current is None:
                raise JobGone()
            if current.state in TERMINAL:
                return
            shards = list(
                (
                    await session.scalars(
                        select(ShardRow)
                        .where(ShardRow.embedding_id == row.id, ShardRow.generation == current.generation)
                        .order_by(ShardRow.index)
                    )
                ).all()
            )
            if not shards:
                first = (
                    await session.execute(
                        select(func.coalesce(func.max(ShardRow.index), -1)).where(ShardRow.embedding_id == row.id)
                    )
                ).scalar_one()  # an aggregate: always one row
                step = self.settings.shard_rows
                for k, start in enumerate(range(current.extend_from, total, step)):
                    shard = ShardRow(
                        embedding_id=row.id, index=int(first) + 1 + k,
                        generation=current.generation, start_row=start, end_row=min(start + step, total),
                        done_row=start, seen_row=start, state=PENDING, worker="", workers=[], parts=[], truncated=0,
                    )
                    session.add(shard)
                    shards.append(shard)
                current.total = total
                current.done = current.extend_from
                current.progress = current.extend_from / total if total else 0.0
                current.rate = 0.0
                current.eta_seconds = 0.0
            current.state = RUNNING
            current.stage = STAGE
            if current.start_time is None:
                current.start_time = utcnow()
            current.update_time = utcnow()
            for shard in shards:  # committed with the shards (the outbox), so none is planned but never queued
                if shard.state != DONE:
                    await self.embeddings.outbox.add_work(
                        session,
                        KIND,
                        {"id": row.id, "owner": owner, "shard": shard.index, "generation": shard.generation},
                    )
            await session.commit()
        await self.embeddings.publish(current)
        if not shards:
            await self._assemble(current)  # nothing to embed (no rows, or no new rows)
            return
        log.info("embedding %s: %d rows in %d shards", row.id, total - current.extend_from, len(shards))

    # --- one shard --------------------------------------------------------------------------

    async def _claim(self, row: EmbeddingRow, index: int) -> ShardRow | None:
        return await through_outages(lambda: self._claim_once(row, index), f"claiming a shard of embedding {row.id}")

    async def _claim_once(self, row: EmbeddingRow, index: int) -> ShardRow | None:
        """The shard, now leased to this worker; None when another live worker holds it."""
        async with self.embeddings.db.sessions() as session:
            current = await session.get(EmbeddingRow, row.id, with_for_update=True)
            self._check(current, row.generation)
            shard = await session.get(ShardRow, (row.id, index), with_for_update=True)
            if shard is None:
                raise Superseded()
            now = utcnow()
            if shard.state == DONE:
                return shard
            if shard.worker and shard.worker != self.name and shard.lease_until and shard.lease_until > now:
                return None
            if shard.worker and shard.worker != self.name:
                log.warning(
                    "embedding %s shard %d: taking over from %s at row %d", row.id, index, shard.worker, shard.done_row
                )
            shard.worker = self.name
            shard.workers = (
                [*(shard.workers or []), self.name] if self.name not in (shard.workers or []) else shard.workers
            )
            shard.lease_until = now + self.lease
            shard.state = RUNNING
            shard.seen_row = shard.done_row
            await session.commit()
            return shard

    @staticmethod
    def _check(current: EmbeddingRow | None, generation: int) -> EmbeddingRow:
        if current is None:
            raise JobGone()
        if current.state == CANCELLED:
            raise JobCancelled()
        if current.generation != generation or current.state in TERMINAL:
            raise Superseded()
        return current

    async def _shard(self, row: EmbeddingRow, owner: str, index: int) -> None:
        shard = await self._claim(row, index)
        if shard is None:
            return  # a duplicate message: the worker holding the lease has its own
        if shard.state == DONE:
            await self._finish_if_complete(row)  # a worker died while joining the parts
            return
        # Imported vectors need no model: their columns are read instead of texts.
        model = None if row.vector_columns else await self.embeddings.models.load(row.model)
        read_columns = list(row.vector_columns or row.text_columns)
        # Held for the whole shard: each window's read gets a token that is fresh enough.
        credentials = self.delegated.for_job(owner)
        window = self.settings.checkpoint_rows
        position, end = shard.done_row, shard.end_row
        if position > shard.start_row:
            log.info("embedding %s shard %d: resuming at row %d of [%d, %d)", row.id, index, position,
                     shard.start_row, end)

        async def read(identity: Identity, start: int, stop: int) -> pa.Table:
            tables = []
            expected = start
            async for first, table in self.embeddings.datasets.stream_rows(
                identity, row.dataset, read_columns, min(window, 8192), start, stop - start
            ):
                if first != expected:
                    raise RuntimeError(f"rows arrived out of order: expected row {expected}, got {first}")
                tables.append(table)
                expected += table.num_rows
            if expected != stop:
                raise RuntimeError(f"ingest sent rows up to {expected}, not {stop}")
            return pa.concat_tables(tables) if tables else pa.table({})

        async def fetch(start: int, stop: int) -> pa.Table:
            return await credentials.call(
                lambda identity: read(identity, start, stop), f"reading rows {start} to {stop} of {row.dataset}"
            )

        last = False
        upcoming: asyncio.Task[pa.Table] | None = asyncio.create_task(fetch(position, min(position + window, end)))
        try:
            while position < end:
                stop_row = min(position + window, end)
                assert upcoming is not None
                table = await upcoming
                # The next window streams in while this one is embedded.
                upcoming = asyncio.create_task(fetch(stop_row, min(stop_row + window, end))) if stop_row < end else None
                vectors, truncated = await self._embed_window(model, row, index, table, position)
                key = part_key(row.id, row.generation, position, stop_row)
                await self._in_thread(
                    write_part, self.embeddings.blobs, key, vectors, row.float16, uuid.uuid4().hex[:8]
                )
                last = await self._checkpoint(row, index, position, stop_row, truncated, stop_row == end)
                position = stop_row
        finally:
            if upcoming is not None:
                upcoming.cancel()
                with contextlib.suppress(BaseException):
                    await upcoming
        if last:
            await self._assemble(row)

    async def _embed_window(
        self, model: Encoder | None, row: EmbeddingRow, index: int, table: pa.Table, position: int
    ) -> tuple[Any, int]:
        if model is None:  # the rows' own vectors, checked (a row without one fails the job, named)
            vectors = await self._in_thread(
                imported.vectors_of, table, list(row.vector_columns), row.dimension, position
            )
            return vectors, 0
        texts = await self._in_thread(build_texts, table, list(row.text_columns), row.template)
        done = [0]
        stop = threading.Event()

        def progress(rows: int) -> None:
            done[0] += rows

        work = asyncio.ensure_future(self._in_thread(model.embed, texts, progress, stop))
        try:
            while True:
                finished, _ = await asyncio.wait({work}, timeout=self.settings.heartbeat)
                if finished:
                    return work.result()
                await self._heartbeat(row, index, position + done[0])
        except BaseException:
            stop.set()  # the thread stops after its current batch and lets go of the model
            with contextlib.suppress(BaseException):
                await work
            raise

    async def _update(
        self, row: EmbeddingRow, index: int, seen: int, checkpoint: tuple[int, int, int, bool] | None = None
    ) -> tuple[EmbeddingRow, bool]:
        """Renew the lease, record progress (and a checkpoint), update the job's rate;
        waits out a PostgreSQL restart rather than failing the job."""
        return await through_outages(
            lambda: self._update_once(row, index, seen, checkpoint), f"recording embedding {row.id}"
        )

    async def _update_once(
        self, row: EmbeddingRow, index: int, seen: int, checkpoint: tuple[int, int, int, bool] | None
    ) -> tuple[EmbeddingRow, bool]:
        complete = False
        async with self.embeddings.db.sessions() as session:
            current = self._check(await session.get(EmbeddingRow, row.id, with_for_update=True), row.generation)
            shard = await session.get(ShardRow, (row.id, index), with_for_update=True)
            if shard is None:
                raise Superseded()
            if shard.worker != self.name:
                raise LeaseLost()
            now = utcnow()
            shard.lease_until = now + self.lease
            shard.seen_row = seen
            if checkpoint is not None:
                start, stop, truncated, last = checkpoint
                if shard.done_row != start:
                    raise LeaseLost()
                shard.done_row = stop
                shard.parts = [*(shard.parts or []), [start, stop]]
                shard.truncated = (shard.truncated or 0) + truncated
                if last:
                    shard.state = DONE
            await session.flush()
            seen_total = await session.scalar(
                select(func.coalesce(func.sum(ShardRow.seen_row - ShardRow.start_row), 0)).where(
                    ShardRow.embedding_id == row.id, ShardRow.generation == row.generation
                )
            )
            done = current.extend_from + int(seen_total or 0)
            # The job's rate over all its workers: rows since the last write by any of them.
            elapsed = (now - current.update_time).total_seconds() if current.update_time else 0.0
            if elapsed >= 0.2:
                instant = max(done - current.done, 0) / elapsed
                current.rate = instant if not current.rate else 0.7 * current.rate + 0.3 * instant
            elif not current.rate and current.start_time is not None:
                # Writes come faster than the window: use the average since the job started.
                running = (now - current.start_time).total_seconds()
                if running > 0:
                    current.rate = max(done - current.extend_from, 0) / running
            current.update_time = now
            # Shown progress never goes back, also when a worker resumes at a checkpoint.
            current.done = max(done, current.done)
            if current.total:
                current.progress = min(done / current.total, 1.0)
                current.eta_seconds = (current.total - done) / current.rate if current.rate > 0 else 0.0
            if checkpoint is not None and checkpoint[3]:
                pending = await session.scalar(
                    select(func.count()).where(
                        ShardRow.embedding_id == row.id, ShardRow.generation == row.generation, ShardRow.state != DONE
                    )
                )
                if not pending:
                    complete = True
                    current.stage = "assembling"
                    current.update_time = now
            await session.commit()
        telemetry.ROW_RATES.report("embedding", (self.name, row.id, index), seen)  # this worker's own rows
        await self.embeddings.publish(current)
        return current, complete

    async def _heartbeat(self, row: EmbeddingRow, index: int, seen: int) -> None:
        await self._update(row, index, seen)

    async def _checkpoint(
        self, row: EmbeddingRow, index: int, start: int, stop: int, truncated: int, last: bool
    ) -> bool:
        """Commit rows [start, stop) of the shard (their part file is written); True when
        that finished the last shard, so this worker joins the parts."""
        _, complete = await self._update(row, index, stop, (start, stop, truncated, last))
        return complete

    # --- the end ----------------------------------------------------------------------------

    async def _finish_if_complete(self, row: EmbeddingRow) -> None:
        async def pending_shards() -> int:
            async with self.embeddings.db.sessions() as session:
                count = await session.scalar(
                    select(func.count()).where(
                        ShardRow.embedding_id == row.id, ShardRow.generation == row.generation, ShardRow.state != DONE
                    )
                )
            return int(count or 0)

        if not await through_outages(pending_shards, f"checking embedding {row.id}"):
            await self._assemble(row)

    async def _assemble(self, row: EmbeddingRow) -> None:
        """Join the earlier vectors (of an extension) and every part, in row order, into the
        vector file, and mark the job done; a PostgreSQL restart meanwhile is waited out
        (joining again writes the same file)."""
        await through_outages(lambda: self._assemble_once(row), f"assembling embedding {row.id}")

    async def _assemble_once(self, row: EmbeddingRow) -> None:
        blobs = self.embeddings.blobs
        async with self.embeddings.db.sessions() as session:
            current = self._check(await session.get(EmbeddingRow, row.id), row.generation)
            shards = list(
                (
                    await session.scalars(
                        select(ShardRow)
                        .where(ShardRow.embedding_id == row.id, ShardRow.generation == row.generation)
                        .order_by(ShardRow.start_row)
                    )
                ).all()
            )
        sources = [vectors_key(row.id)] if current.extend_from > 0 else []
        expected = current.extend_from
        for shard in shards:
            for start, stop in shard.parts or []:
                if start != expected:
                    raise RuntimeError(f"embedding {row.id}: part [{start}, {stop}) does not follow row {expected}")
                sources.append(part_key(row.id, row.generation, start, stop))
                expected = stop
        if expected != current.total:
            raise RuntimeError(f"embedding {row.id}: parts cover {expected} rows, not {current.total}")
        dimension = current.dimension
        if not sources or not dimension:
            dimension = (await self.embeddings.models.load(row.model)).dimension
        tag = uuid.uuid4().hex[:8]
        temporary, rows = await self._in_thread(
            assemble, blobs, vectors_key(row.id), sources, dimension, current.float16, tag
        )
        truncated = sum(shard.truncated or 0 for shard in shards)
        async with self.embeddings.db.sessions() as session:
            final = await session.get(EmbeddingRow, row.id, with_for_update=True)
            try:
                final = self._check(final, row.generation)
            except BaseException:
                blobs.delete(temporary)
                raise
            # Moved while the row is locked, so a cancel cannot slip in between.
            await asyncio.to_thread(blobs.move, temporary, vectors_key(row.id))
            now = utcnow()
            final.state = SUCCEEDED
            final.stage = "done"
            final.progress = 1.0
            final.eta_seconds = 0.0
            final.done = rows
            final.total = rows
            final.row_count = rows
            final.dimension = dimension
            final.truncated_count = (final.truncated_count or 0) + truncated
            final.end_time = now
            final.update_time = now
            final.error = ""
            if final.project_when_done:  # the projection service starts the map on this event
                await self.embeddings.announce(session, final)
            await session.commit()
        await self.embeddings.publish(final)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(blobs.delete_dir, parts_prefix(row.id, row.generation))
        log.info("embedding %s succeeded: %d rows", row.id, rows)
