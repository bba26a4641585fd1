"""The embedding job: stream the dataset's rows from ingest, build the texts, embed
them in batches in a worker thread, write the vector file, report progress."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pyarrow as pa

from services.common.clients import DelegatedTokens
from services.common.errors import DomainError
from services.common.events import MAX_DELIVER
from services.common.jobs import TERMINAL, JobCancelled, JobGone, JobReporter
from services.embedding.embeddings import Embeddings
from services.embedding.encoder import LoadedModel
from services.embedding.models import EmbeddingRow
from services.embedding.texts import build_texts
from services.embedding.vectors import VectorFileWriter, partial_key, vectors_key

log = logging.getLogger(__name__)

STAGE = "embedding"
# Rows a StreamRows batch brings, and rows embedded per worker-thread call (which is also
# the longest a text-to-vector query waits behind a job for the model).
STREAM_BATCH_ROWS = 1024
ENCODE_CHUNK_ROWS = 256


def embed_batch(
    model: LoadedModel, writer: VectorFileWriter, table: pa.Table, columns: list[str], template: str
) -> int:
    """Embed one batch of rows and append the vectors; returns how many texts were cut.
    Blocking: runs in a worker thread."""
    texts = build_texts(table, columns, template)
    truncated = model.count_truncated(texts)
    for start in range(0, len(texts), ENCODE_CHUNK_ROWS):
        writer.write(model.encode(texts[start : start + ENCODE_CHUNK_ROWS]))
    return truncated


class EmbeddingWorker:
    def __init__(self, embeddings: Embeddings, delegated: DelegatedTokens) -> None:
        self.embeddings = embeddings
        self.delegated = delegated

    async def handle(self, payload: dict[str, Any], delivery: int) -> None:
        """One message of the `embedding` work queue."""
        job_id = str(payload.get("id", ""))
        owner = str(payload.get("owner", ""))
        db = self.embeddings.db
        async with db.sessions() as session:
            row = await session.get(EmbeddingRow, job_id)
        if row is None or row.state in TERMINAL:
            return  # deleted or cancelled before a worker got to it
        reporter: JobReporter[EmbeddingRow] = JobReporter(
            db.sessions, EmbeddingRow, job_id, self.embeddings.publish
        )
        if delivery >= MAX_DELIVER:
            await reporter.fail(
                f"the embedding worker stopped {delivery - 1} times while working on this job; "
                "it was given up. Try again, perhaps with fewer rows"
            )
            return
        if delivery > 1:
            log.warning("embedding %s delivered %d times; starting it again from the first row", job_id, delivery)
        try:
            await self._run(row, owner or row.owner, reporter)
        except (JobCancelled, JobGone) as exc:
            log.info("embedding %s stopped: %s", job_id, type(exc).__name__)
            self._remove_partial(job_id)
        except DomainError as exc:
            self._remove_partial(job_id)
            await reporter.fail(exc.message)
        except asyncio.CancelledError:
            raise  # this process is stopping; the message goes back to the queue
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("embedding %s failed (ref %s)", job_id, ref)
            self._remove_partial(job_id)
            await reporter.fail(f"embedding failed unexpectedly (ref {ref}); the server log has the details")

    def _remove_partial(self, job_id: str) -> None:
        try:
            self.embeddings.blobs.delete(partial_key(job_id))
        except OSError:
            log.warning("could not remove the partial vectors of %s", job_id, exc_info=True)

    async def _run(self, row: EmbeddingRow, owner: str, reporter: JobReporter[EmbeddingRow]) -> None:
        identity = await self.delegated.identity_for(owner)
        dataset = await self.embeddings.datasets.get(identity, row.dataset)
        total = dataset.row_count
        await reporter.start(STAGE, total=total)
        model = await self.embeddings.models.load(row.model)
        blobs = self.embeddings.blobs
        columns = list(row.text_columns)
        writer = VectorFileWriter(blobs.open_output(partial_key(row.id)), model.dimension)
        done = 0
        truncated = 0
        try:
            stream = self.embeddings.datasets.stream_rows(identity, row.dataset, columns, STREAM_BATCH_ROWS)
            async for start_row, table in stream:
                if start_row != done:
                    raise RuntimeError(f"rows arrived out of order: expected row {done}, got {start_row}")
                truncated += await asyncio.to_thread(embed_batch, model, writer, table, columns, row.template)
                done += table.num_rows
                await reporter.progress(done, total=max(total, done))
        except BaseException:
            writer.abort()
            raise
        await asyncio.to_thread(writer.close)
        await asyncio.to_thread(blobs.move, partial_key(row.id), vectors_key(row.id))
        try:
            await reporter.succeed(
                dimension=model.dimension, row_count=done, truncated_count=truncated, done=done, total=done
            )
        except (JobCancelled, JobGone):
            blobs.delete(vectors_key(row.id))
            raise
