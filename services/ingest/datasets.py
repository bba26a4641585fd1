"""Uploads (resumable, chunk by chunk), datasets and their import job, and access to
their rows. Plain Python over the database, the blob store and the event bus."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from embedviz.v1 import ingest_pb2
from services.common import names
from services.common.auth import Identity
from services.common.blobs import BlobStore
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from services.common.events import EventBus
from services.common.jobs import FAILED, PENDING, SUCCEEDED, TERMINAL, JobCancelled, JobGone, JobReporter, utcnow, watch
from services.ingest import messages, paging
from services.ingest.checksum import crc32c
from services.ingest.importer import FORMATS, ImportFailed, ImportStopped, import_file
from services.ingest.models import Dataset, Upload
from services.ingest.projects import EDITOR, VIEWER, require

log = logging.getLogger(__name__)

KIND = "dataset"
MAX_CHUNK_BYTES = 4 * 1024 * 1024
UPLOAD_LIFETIME = timedelta(hours=24)
HASH_BLOCK = 1 << 20


def part_key(upload_id: str) -> str:
    return f"uploads/{upload_id}.part"


def rows_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/rows.parquet"


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def _merge(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    merged: list[list[int]] = []
    for lo, hi in sorted([*([r[0], r[1]] for r in ranges), [start, end]]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


def _contiguous(ranges: list[list[int]]) -> int:
    return ranges[0][1] if ranges and ranges[0][0] == 0 else 0


@dataclass
class DatasetPage:
    datasets: list[Dataset]
    next_page_token: str


class Datasets:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        bus: EventBus,
        max_upload_bytes: int,
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._bus = bus
        self._max_upload_bytes = max_upload_bytes

    # --- uploads ---------------------------------------------------------------------

    async def create_upload(self, identity: Identity, parent: str, filename: str, size: int, sha256: str) -> Upload:
        pid = names.parse(parent, "projects/{project}")["project"]
        filename = filename.strip()
        if not filename:
            raise InvalidArgument("upload.filename is required, e.g. \"reviews.csv\"")
        if len(filename) > 500 or "/" in filename or "\\" in filename:
            raise InvalidArgument("upload.filename must be a plain file name of at most 500 characters")
        if size <= 0:
            raise InvalidArgument(f"upload.size_bytes must be positive (got {size})")
        if size > self._max_upload_bytes:
            raise InvalidArgument(
                f"upload.size_bytes is {size}; this server takes files up to {self._max_upload_bytes} bytes"
            )
        sha256 = sha256.strip().lower()
        if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
            raise InvalidArgument("upload.sha256 must be 64 hex digits (the SHA-256 of the whole file)")
        now = utcnow()
        upload = Upload(
            id=names.new_id(), project_id=pid, owner=identity.user, filename=filename, size_bytes=size,
            sha256=sha256, ranges=[], received_bytes=0, create_time=now, expire_time=now + UPLOAD_LIFETIME,
        )
        async with self._sessions() as session:
            await require(session, identity, pid, EDITOR)
            await asyncio.to_thread(self._create_part, upload.id)
            session.add(upload)
            await session.commit()
        return upload

    def _create_part(self, upload_id: str) -> None:
        with self._blobs.open_output(part_key(upload_id)):
            pass

    async def _load_upload(self, session: AsyncSession, identity: Identity, name: str, minimum: str, lock: bool = False) -> Upload:
        parts = names.parse(name, "projects/{project}/uploads/{upload}")
        await require(session, identity, parts["project"], minimum)
        upload = await session.get(Upload, parts["upload"], with_for_update=lock)
        if upload is None or upload.project_id != parts["project"]:
            raise NotFound(f"{name} not found")
        return upload

    async def get_upload(self, identity: Identity, name: str) -> Upload:
        async with self._sessions() as session:
            return await self._load_upload(session, identity, name, VIEWER)

    async def append_chunk(self, identity: Identity, name: str, offset: int, data: bytes, checksum: int) -> int:
        if not data:
            raise InvalidArgument("data is empty; send at least one byte")
        if len(data) > MAX_CHUNK_BYTES:
            raise InvalidArgument(f"a chunk holds at most {MAX_CHUNK_BYTES} bytes (got {len(data)})")
        if offset < 0:
            raise InvalidArgument(f"offset must not be negative (got {offset})")
        if checksum:
            actual = await asyncio.to_thread(crc32c, data)
            if actual != checksum:
                raise InvalidArgument(
                    f"crc32c of the chunk is {actual:#010x}, not {checksum:#010x}: it was damaged on the way; send it again"
                )
        async with self._sessions() as session:
            # The row lock orders chunks of one upload; other uploads go on in parallel.
            upload = await self._load_upload(session, identity, name, EDITOR, lock=True)
            if upload.dataset_id:
                raise FailedPrecondition(f"{name} is finished; start a new upload to send more")
            if upload.expire_time < utcnow():
                raise FailedPrecondition(f"{name} expired at {upload.expire_time.isoformat()}; start a new upload")
            end = offset + len(data)
            if end > upload.size_bytes:
                raise OutOfRange(
                    f"the chunk ends at byte {end}, past the declared size of {upload.size_bytes} bytes"
                )
            await asyncio.to_thread(self._write_chunk, upload, offset, data)
            upload.ranges = _merge(upload.ranges or [], offset, end)
            upload.received_bytes = _contiguous(upload.ranges)
            await session.commit()
            return upload.received_bytes

    def _write_chunk(self, upload: Upload, offset: int, data: bytes) -> None:
        key = part_key(upload.id)
        path = self._blobs.local_path(key)
        if path is not None:
            with open(path, "r+b") as f:  # random access: chunks may come in any order
                f.seek(offset)
                f.write(data)
            return
        # Object stores append only: take chunks in order, and repeats of what arrived.
        if offset + len(data) <= upload.received_bytes:
            return
        if offset != upload.received_bytes:
            raise FailedPrecondition(
                f"this blob store takes chunks in order; send the chunk at offset {upload.received_bytes}"
            )
        with self._blobs.open_append(key) as f:
            f.write(data)

    def _sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self._blobs.open_input_stream(key) as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
        return digest.hexdigest()

    async def finish_upload(
        self, identity: Identity, name: str, display_name: str, fmt: str, delimiter: str
    ) -> Dataset:
        if fmt and fmt not in FORMATS:
            raise InvalidArgument(f"format '{fmt}' is not one this service reads")
        if delimiter:
            if len(delimiter) != 1 or delimiter in "\"\r\n":
                raise InvalidArgument("delimiter must be one character other than a quote or a line break, e.g. \",\" or \"\\t\"")
            if fmt not in ("", "csv"):
                raise InvalidArgument("delimiter applies only to CSV files")
        display_name = display_name.strip()
        if len(display_name) > 200:
            raise InvalidArgument("display_name is longer than 200 characters")
        async with self._sessions() as session:
            upload = await self._load_upload(session, identity, name, EDITOR, lock=True)
            if upload.dataset_id:
                raise FailedPrecondition(
                    f"{name} is already finished: it became projects/{upload.project_id}/datasets/{upload.dataset_id}"
                )
            if upload.received_bytes < upload.size_bytes:
                raise FailedPrecondition(
                    f"upload has {upload.received_bytes} of {upload.size_bytes} bytes; "
                    f"send the rest from offset {upload.received_bytes}"
                )
            if upload.sha256:
                actual = await asyncio.to_thread(self._sha256, part_key(upload.id))
                if actual != upload.sha256:
                    raise FailedPrecondition(
                        f"the uploaded bytes have SHA-256 {actual}, not the declared {upload.sha256}; "
                        "the file changed or was damaged; start a new upload"
                    )
            dataset = Dataset(
                id=names.new_id(), project_id=upload.project_id, owner=identity.user,
                display_name=display_name or upload.filename, source_filename=upload.filename,
                format=fmt, delimiter=delimiter, upload_id=upload.id, columns=[], row_count=0,
                size_bytes=upload.size_bytes, state=PENDING, progress=0.0, stage="queued", done=0, total=0,
                rate=0.0, eta_seconds=0.0, error="", create_time=utcnow(), update_time=utcnow(),
            )
            session.add(dataset)
            upload.dataset_id = dataset.id
            await session.commit()
        await self._publish(dataset)
        await self._bus.enqueue(KIND, {"id": dataset.id, "owner": identity.user})
        return dataset

    # --- datasets --------------------------------------------------------------------

    async def _load(self, session: AsyncSession, identity: Identity, name: str, minimum: str) -> Dataset:
        parts = names.parse(name, "projects/{project}/datasets/{dataset}")
        await require(session, identity, parts["project"], minimum)
        dataset = await session.get(Dataset, parts["dataset"])
        if dataset is None or dataset.project_id != parts["project"]:
            raise NotFound(f"{name} not found")
        return dataset

    async def get(self, identity: Identity, name: str) -> Dataset:
        async with self._sessions() as session:
            return await self._load(session, identity, name, VIEWER)

    async def list(self, identity: Identity, parent: str, size: int, token: str) -> DatasetPage:
        pid = names.parse(parent, "projects/{project}")["project"]
        limit = paging.page_size(size, 50, 1000)
        after = paging.decode(token)
        query = (
            select(Dataset).where(Dataset.project_id == pid)
            .order_by(Dataset.create_time.desc(), Dataset.id.desc()).limit(limit + 1)
        )
        if after is not None:
            try:
                at, last_id = datetime.fromisoformat(after[0]), str(after[1])
            except (TypeError, ValueError, IndexError):
                raise InvalidArgument("page_token is not a token this service gave out") from None
            query = query.where(or_(Dataset.create_time < at, and_(Dataset.create_time == at, Dataset.id < last_id)))
        async with self._sessions() as session:
            await require(session, identity, pid, VIEWER)
            found = list((await session.scalars(query)).all())
        more = len(found) > limit
        found = found[:limit]
        token = paging.encode([found[-1].create_time.isoformat(), found[-1].id]) if more else ""
        return DatasetPage(found, token)

    async def delete(self, identity: Identity, name: str) -> None:
        """Removes the row and the rows blob. Embeddings and projections made from the
        dataset belong to their services, which remove them (not yet: a later issue)."""
        async with self._sessions() as session:
            dataset = await self._load(session, identity, name, EDITOR)
            await session.delete(dataset)
            await session.commit()
        await self.remove_blobs([dataset_prefix(dataset.id)])
        await self._bus.delete_events(KIND, dataset.id)

    async def remove_blobs(self, keys: list[str]) -> None:
        def remove() -> None:
            for key in keys:
                if key.startswith("uploads/"):
                    self._blobs.delete(f"{key}.part")
                else:
                    self._blobs.delete_dir(key)

        await asyncio.to_thread(remove)
        for key in keys:
            if key.startswith("datasets/"):
                await self._bus.delete_events(KIND, key.split("/", 1)[1])

    async def watch(self, identity: Identity, name: str) -> AsyncIterator[ingest_pb2.Dataset]:
        dataset = await self.get(identity, name)

        async def load() -> ingest_pb2.Dataset:
            async with self._sessions() as session:
                row = await session.get(Dataset, dataset.id)
            if row is None:
                raise NotFound(f"{name} not found")
            return messages.dataset(row)

        events = watch(self._bus, KIND, dataset.id, load, ingest_pb2.Dataset.FromString, lambda d: d.job)
        try:
            async for message in events:
                yield message
        finally:
            await events.aclose()

    async def open_rows(self, identity: Identity, name: str) -> pq.ParquetFile:
        """The Parquet file of an imported dataset, for reading rows."""
        dataset = await self.get(identity, name)
        if dataset.state != SUCCEEDED:
            if dataset.state == FAILED:
                raise FailedPrecondition(f"{name} failed to import: {dataset.error}")
            raise FailedPrecondition(f"{name} is still importing ({dataset.state.lower()}); its rows are not ready yet")
        return await asyncio.to_thread(lambda: pq.ParquetFile(self._blobs.open_input_file(rows_key(dataset.id))))

    # --- the import job --------------------------------------------------------------

    async def _publish(self, row: Dataset) -> None:
        await self._bus.publish_event(KIND, row.id, messages.dataset(row).SerializeToString())

    async def run_import(self, payload: dict[str, Any], delivery: int) -> None:
        """Work-queue handler: import one dataset's upload. A redelivered message (the
        worker died) starts the import over; the Parquet file is rewritten from scratch."""
        dataset_id = str(payload.get("id", ""))
        async with self._sessions() as session:
            dataset = await session.get(Dataset, dataset_id)
        if dataset is None or dataset.state in TERMINAL:
            return
        reporter: JobReporter[Dataset] = JobReporter(self._sessions, Dataset, dataset_id, self._publish)
        stop = threading.Event()
        latest = [0, 0]

        def on_progress(rows: int, total: int) -> None:
            if stop.is_set():
                raise ImportStopped()
            latest[0], latest[1] = rows, total

        async def pump() -> None:
            while True:
                await asyncio.sleep(0.5)
                try:
                    await reporter.progress(latest[0], total=latest[1] or None)
                except (JobGone, JobCancelled):
                    stop.set()
                    return

        try:
            await reporter.start("parsing", total=0)
        except (JobGone, JobCancelled):
            return
        source = part_key(dataset.upload_id)
        pumping = asyncio.create_task(pump())
        try:
            result = await asyncio.to_thread(
                import_file,
                lambda: self._blobs.open_input_file(source),
                lambda: self._blobs.open_output(rows_key(dataset_id)),
                dataset.source_filename,
                dataset.size_bytes,
                dataset.format,
                dataset.delimiter,
                on_progress,
            )
        except ImportStopped:
            await self.remove_blobs([dataset_prefix(dataset_id)])
            return
        except ImportFailed as exc:
            await self.remove_blobs([dataset_prefix(dataset_id)])
            await reporter.fail(str(exc))
            await asyncio.to_thread(self._blobs.delete, source)
            return
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("import of dataset %s failed (ref %s)", dataset_id, ref)
            await self.remove_blobs([dataset_prefix(dataset_id)])
            await reporter.fail(f"the import failed unexpectedly (ref {ref}); the server log has the details")
            return
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
        try:
            await reporter.succeed(
                format=result.format, delimiter=result.delimiter, row_count=result.row_count,
                columns=[c.as_dict() for c in result.columns], done=result.row_count, total=result.row_count,
            )
        except (JobGone, JobCancelled):
            await self.remove_blobs([dataset_prefix(dataset_id)])
            return
        await asyncio.to_thread(self._blobs.delete, source)
