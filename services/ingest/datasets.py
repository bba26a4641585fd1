"""Uploads (resumable, chunk by chunk), datasets and their import job, and access to
their rows. Plain Python over the database, the blob store and the event bus."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from embedviz.v1 import ingest_pb2
from services.common import names, paging
from services.common.auth import Identity
from services.common.blobs import BlobStore
from services.common.db import through_outages
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.events import EventBus
from services.common.jobs import FAILED, PENDING, SUCCEEDED, TERMINAL, JobCancelled, JobGone, JobReporter, utcnow, watch
from services.common.outbox import Outbox
from services.common.runner import Job, JobKind
from services.ingest import messages
from services.ingest.checksum import crc32c
from services.ingest.deletions import announce_deleted
from services.ingest.importer import Checkpoint, assemble, import_file, read_column_names
from services.ingest.models import Dataset, Upload
from services.ingest.projects import EDITOR, VIEWER, require
from services.ingest.reading import (
    COMPRESSIONS,
    ENCODINGS,
    FORMATS,
    QUOTES,
    ImportFailed,
    ImportStopped,
    Options,
)
from services.ingest.settings import IngestSettings

log = logging.getLogger(__name__)

KIND = "dataset"
MAX_CHUNK_BYTES = 4 * 1024 * 1024
HASH_BLOCK = 1 << 20


def part_key(upload_id: str) -> str:
    """The uploaded file, whole: written in place chunk by chunk in a local folder, joined
    from its chunks (chunks_prefix) when the upload finishes on S3."""
    return f"uploads/{upload_id}.part"


def chunks_prefix(upload_id: str) -> str:
    """An upload's chunks on S3, one object each, named by the byte range they hold."""
    return f"uploads/{upload_id}.chunks"


def chunk_key(upload_id: str, offset: int, end: int) -> str:
    return f"{chunks_prefix(upload_id)}/{offset:016d}-{end:016d}"


def rows_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/rows.parquet"


def next_rows_key(dataset_id: str) -> str:
    """Where an import or append writes; moved onto rows_key only once it succeeded."""
    return f"datasets/{dataset_id}/rows.next.parquet"


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def import_parts_prefix(dataset_id: str) -> str:
    """The parts an import has committed so far (importer.Parts); gone once it ends."""
    return f"{dataset_prefix(dataset_id)}/import"


class ImportParts:
    """An import's part files in the blob store, each committed with its checkpoint in the
    dataset's row, so that a re-delivered import resumes after the last one. Called from the
    import's worker thread; the checkpoint is written on the event loop."""

    def __init__(
        self,
        blobs: BlobStore,
        dataset_id: str,
        part_rows: int,
        save: Callable[[Checkpoint], Coroutine[Any, Any, None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.part_rows = part_rows
        self._blobs = blobs
        self._prefix = import_parts_prefix(dataset_id)
        self._save = save
        self._loop = loop

    def key(self, tag: str, index: int) -> str:
        return f"{self._prefix}/{tag}-{index:05d}.parquet"

    def open(self, tag: str, index: int) -> Any:
        return self._blobs.open_output(self.key(tag, index) + ".next")

    def commit(self, tag: str, index: int, checkpoint: Checkpoint) -> None:
        self._blobs.move(self.key(tag, index) + ".next", self.key(tag, index))
        asyncio.run_coroutine_threadsafe(self._save(checkpoint), self._loop).result()

    def read(self, tag: str, index: int) -> pq.ParquetFile:
        return pq.ParquetFile(self._blobs.open_input_file(self.key(tag, index)))


def check_options(fmt: str, delimiter: str, quote_char: str, encoding: str, compression: str) -> Options:
    if fmt and fmt not in FORMATS:
        raise InvalidArgument(f"format '{fmt}' is not one this service reads")
    if delimiter:
        if len(delimiter) != 1 or delimiter in "\"'\r\n":
            raise InvalidArgument(
                'delimiter must be one character other than a quote or a line break, e.g. "," or "\\t"'
            )
        if fmt not in ("", "csv"):
            raise InvalidArgument("delimiter applies only to CSV files")
    if quote_char and quote_char not in QUOTES:
        raise InvalidArgument("quote_char must be \" or ' (or empty to sniff it)")
    if quote_char and delimiter and quote_char == delimiter:
        raise InvalidArgument("quote_char and delimiter must differ")
    encoding = encoding.strip().lower().replace("_", "-")
    encoding = {"utf8": "utf-8", "utf16": "utf-16", "latin1": "latin-1", "iso-8859-1": "latin-1"}.get(
        encoding, encoding
    )
    if encoding and encoding not in ENCODINGS:
        raise InvalidArgument(
            f"encoding '{encoding}' is not supported; use one of {', '.join(ENCODINGS)} (or empty to sniff it)"
        )
    compression = compression.strip().lower()
    if compression and compression not in COMPRESSIONS:
        raise InvalidArgument(f"compression '{compression}' is not supported; use one of {', '.join(COMPRESSIONS)}")
    return Options(format=fmt, delimiter=delimiter, quote_char=quote_char, encoding=encoding, compression=compression)


def _import_open(dataset: Dataset, payload: dict[str, Any]) -> bool:
    """Is there still work for this message: the dataset's import, or this append?"""
    append_id = str(payload.get("append", ""))
    if append_id:
        return dataset.appending_upload_id == append_id
    return dataset.state not in TERMINAL


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
        settings: IngestSettings,
        outbox: Outbox,
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._bus = bus
        self._outbox = outbox  # import work and deletion events, sent with the commit that makes them
        self._settings = settings
        self._max_upload_bytes = settings.max_upload_bytes

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
            sha256=sha256, ranges=[], received_bytes=0, create_time=now, expire_time=now + self._settings.upload_ttl,
        )
        async with self._sessions() as session:
            await require(session, identity, pid, EDITOR)
            used = await self._bytes_used(session, identity.user)
            if used + size > self._settings.max_user_bytes:
                raise FailedPrecondition(
                    f"this upload of {size} bytes would bring your data to {used + size} bytes; each user may keep "
                    f"{self._settings.max_user_bytes} bytes (EMBEDVIZ_MAX_USER_BYTES): "
                    "delete datasets you no longer need"
                )
            await asyncio.to_thread(self._create_part, upload.id)
            session.add(upload)
            await session.commit()
        return upload

    @staticmethod
    async def _bytes_used(session: AsyncSession, owner: str) -> int:
        """A user's bytes: their datasets' source files (not failed ones) and their uploads
        still on their way in."""
        datasets = await session.scalar(
            select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(
                Dataset.owner == owner, Dataset.state != FAILED
            )
        )
        uploads = await session.scalar(
            select(func.coalesce(func.sum(Upload.size_bytes), 0)).where(
                Upload.owner == owner, Upload.dataset_id.is_(None), Upload.expire_time >= utcnow()
            )
        )
        return int(datasets or 0) + int(uploads or 0)

    async def sweep_expired_uploads(self) -> int:
        """Remove uploads that expired unfinished, rows and bytes; returns how many. The
        DELETE re-checks the expiry under the row lock, so a chunk arriving at the same
        moment (which extends it) keeps its upload."""
        async with self._sessions() as session:
            gone = list(
                (
                    await session.scalars(
                        delete(Upload)
                        .where(Upload.dataset_id.is_(None), Upload.expire_time < utcnow())
                        .returning(Upload.id)
                    )
                ).all()
            )
            await session.commit()
        if gone:
            await self.remove_blobs([f"uploads/{u}" for u in gone])
            log.info("removed %d expired uploads", len(gone))
        return len(gone)

    async def sweep_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep_expired_uploads()
            except Exception:  # the database may be restarting: try again next round
                log.exception("sweeping expired uploads failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._settings.sweep_interval)

    def _create_part(self, upload_id: str) -> None:
        if self._blobs.local:  # chunks are written into it; on S3 each chunk is an object
            with self._blobs.open_output(part_key(upload_id)):
                pass

    async def _load_upload(
        self, session: AsyncSession, identity: Identity, name: str, minimum: str, lock: bool = False
    ) -> Upload:
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
                    f"crc32c of the chunk is {actual:#010x}, not {checksum:#010x}: "
                    "it was damaged on the way; send it again"
                )
        async with self._sessions() as session:
            # The row lock orders chunks of one upload; other uploads go on in parallel.
            upload = await self._load_upload(session, identity, name, EDITOR, lock=True)
            if upload.dataset_id:
                raise FailedPrecondition(f"{name} is finished; start a new upload to send more")
            if upload.expire_time < utcnow():
                raise FailedPrecondition(f"{name} expired at {upload.expire_time.isoformat()}; start a new upload")
            upload.expire_time = utcnow() + self._settings.upload_ttl  # expiry counts from the last chunk
            end = offset + len(data)
            if end > upload.size_bytes:
                raise InvalidArgument(
                    f"the chunk ends at byte {end}, past the declared size of {upload.size_bytes} bytes"
                )
            await asyncio.to_thread(self._write_chunk, upload, offset, data)
            upload.ranges = _merge(upload.ranges or [], offset, end)
            upload.received_bytes = _contiguous(upload.ranges)
            await session.commit()
            return upload.received_bytes

    def _write_chunk(self, upload: Upload, offset: int, data: bytes) -> None:
        path = self._blobs.local_path(part_key(upload.id))
        if path is not None:
            with open(path, "r+b") as f:  # random access: chunks may come in any order
                f.seek(offset)
                f.write(data)
            return
        # S3 cannot append or write into an object: each chunk is one, joined at the finish.
        self._blobs.put(chunk_key(upload.id, offset, offset + len(data)), data)

    def _join_chunks(self, upload: Upload) -> None:
        """On S3: the upload's chunks, in order of their offsets, become its file. A range
        sent twice (a retry, maybe cut otherwise) is taken once. The chunks stay until the
        file goes (the import is done, or the upload removed), so a finish may run again."""
        chunks = []
        for name, _ in self._blobs.files(chunks_prefix(upload.id)):
            first, _, after = name.partition("-")
            if first.isdigit() and after.isdigit():
                chunks.append((int(first), int(after), name))
        chunks.sort(key=lambda c: (c[0], -c[1]))
        written = 0
        with self._blobs.open_output(part_key(upload.id)) as sink:
            for start, end, name in chunks:
                if end <= written:
                    continue
                if start > written:
                    break
                with self._blobs.open_input_stream(f"{chunks_prefix(upload.id)}/{name}") as chunk:
                    data = chunk.read()
                sink.write(data[written - start:])
                written = end
        if written < upload.size_bytes:
            raise FailedPrecondition(
                f"the upload's bytes from offset {written} are missing from the blob store; start a new upload"
            )

    def _delete_upload_bytes(self, key: str) -> None:
        """An upload's file (part_key) and, on S3, the chunks it was joined from."""
        self._blobs.delete(key)
        if not self._blobs.local:
            self._blobs.delete_dir(key.removesuffix(".part") + ".chunks")

    def _sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self._blobs.open_input_stream(key) as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
        return digest.hexdigest()

    async def _finished_upload(self, session: AsyncSession, identity: Identity, name: str) -> Upload:
        """The upload, locked, with all its bytes there and matching its SHA-256."""
        upload = await self._load_upload(session, identity, name, EDITOR, lock=True)
        if upload.dataset_id:
            raise FailedPrecondition(
                f"{name} is already finished: it became projects/{upload.project_id}/datasets/{upload.dataset_id}"
            )
        if upload.expire_time < utcnow():
            raise FailedPrecondition(f"{name} expired at {upload.expire_time.isoformat()}; start a new upload")
        if upload.received_bytes < upload.size_bytes:
            raise FailedPrecondition(
                f"upload has {upload.received_bytes} of {upload.size_bytes} bytes; "
                f"send the rest from offset {upload.received_bytes}"
            )
        if not self._blobs.local:
            await asyncio.to_thread(self._join_chunks, upload)
        if upload.sha256:
            actual = await asyncio.to_thread(self._sha256, part_key(upload.id))
            if actual != upload.sha256:
                raise FailedPrecondition(
                    f"the uploaded bytes have SHA-256 {actual}, not the declared {upload.sha256}; "
                    "the file changed or was damaged; start a new upload"
                )
        return upload

    async def finish_upload(
        self, identity: Identity, name: str, display_name: str, options: Options
    ) -> Dataset:
        display_name = display_name.strip()
        if len(display_name) > 200:
            raise InvalidArgument("display_name is longer than 200 characters")
        async with self._sessions() as session:
            upload = await self._finished_upload(session, identity, name)
            dataset = Dataset(
                id=names.new_id(), project_id=upload.project_id, owner=identity.user,
                display_name=display_name or upload.filename, source_filename=upload.filename,
                format=options.format, delimiter=options.delimiter, quote_char=options.quote_char,
                encoding=options.encoding, compression=options.compression, upload_id=upload.id, columns=[],
                row_count=0, size_bytes=upload.size_bytes, parsed_bytes=0, appending_upload_id="", append_error="",
                state=PENDING, progress=0.0, stage="queued", done=0, total=0,
                rate=0.0, eta_seconds=0.0, error="", create_time=utcnow(), update_time=utcnow(),
            )
            session.add(dataset)
            upload.dataset_id = dataset.id
            await self._outbox.add_work(session, KIND, {"id": dataset.id, "owner": identity.user})
            await session.commit()
        await self._publish(dataset)
        return dataset

    async def append_rows(self, identity: Identity, dataset_name: str, upload_name: str, options: Options) -> Dataset:
        """Queue the rows of a finished upload to be added to a dataset. The columns are
        compared here, so the common mistake is refused at once."""
        parts = names.parse(dataset_name, "projects/{project}/datasets/{dataset}")
        upload_parts = names.parse(upload_name, "projects/{project}/uploads/{upload}")
        if upload_parts["project"] != parts["project"]:
            raise InvalidArgument("upload must be an upload of the dataset's project")
        async with self._sessions() as session:
            dataset = await self._load(session, identity, dataset_name, EDITOR)
            if dataset.appending_upload_id or dataset.state != SUCCEEDED:
                raise FailedPrecondition(
                    f"{dataset_name} is "
                    f"{'appending other rows' if dataset.appending_upload_id else dataset.state.lower()}; "
                    "rows can be appended to a dataset once its import or append has succeeded"
                )
            upload = await self._finished_upload(session, identity, upload_name)
            existing = [c["name"] for c in dataset.columns or []]
        upload_key = part_key(upload.id)

        def check() -> Options:
            settled, new_columns = read_column_names(
                lambda: self._blobs.open_input_file(upload_key), upload.filename, options, self._settings.limits
            )
            missing = [n for n in existing if n not in new_columns]
            extra = [n for n in new_columns if n not in existing]
            if missing or extra:
                said = []
                if missing:
                    said.append("missing " + ", ".join(f"'{n}'" for n in missing))
                if extra:
                    said.append("not in the dataset " + ", ".join(f"'{n}'" for n in extra))
                raise FailedPrecondition(
                    f"the new file's columns differ from the dataset's ({'; '.join(said)}); "
                    f"the dataset has: {', '.join(existing)}"
                )
            return settled

        try:
            settled = await asyncio.to_thread(check)
        except ImportFailed as exc:
            raise InvalidArgument(f"{upload.filename}: {exc}") from None
        async with self._sessions() as session:
            locked = await session.get(Dataset, parts["dataset"], with_for_update=True)
            upload_row = await session.get(Upload, upload.id, with_for_update=True)
            if locked is None or upload_row is None:
                raise NotFound(f"{dataset_name} not found")
            dataset = locked
            if dataset.appending_upload_id or dataset.state != SUCCEEDED or upload_row.dataset_id:
                raise FailedPrecondition(f"{dataset_name} changed meanwhile; look at it again and retry")
            dataset.appending_upload_id = upload.id
            dataset.append_error = ""
            dataset.state, dataset.stage, dataset.progress = PENDING, "queued (append)", 0.0
            dataset.done, dataset.total, dataset.parsed_bytes, dataset.error = 0, 0, 0, ""
            dataset.end_time = None
            dataset.update_time = utcnow()
            upload_row.dataset_id = dataset.id
            await self._outbox.add_work(
                session,
                KIND,
                {
                    "id": dataset.id,
                    "owner": identity.user,
                    "append": upload.id,
                    "options": {
                        "format": settled.format,
                        "delimiter": settled.delimiter,
                        "quote_char": settled.quote_char,
                        "encoding": settled.encoding,
                        "compression": settled.compression,
                    },
                },
            )
            await session.commit()
        await self._publish(dataset)
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
        """Removes the row and every blob of the dataset; the deletion event (so the
        embedding and projection services remove what they made from it) is committed
        with the row's deletion, through the outbox."""
        async with self._sessions() as session:
            dataset = await self._load(session, identity, name, EDITOR)
            await session.delete(dataset)
            await announce_deleted(self._outbox, session, dataset.project_id, [dataset.id])
            await session.commit()
        # An import or append not yet run leaves its upload's bytes: they go too.
        uploads = [f"uploads/{u}" for u in (dataset.upload_id, dataset.appending_upload_id) if u]
        await self.remove_blobs([dataset_prefix(dataset.id), *uploads])

    async def remove_project_data(self, project_name: str, keys: builtins.list[str]) -> None:
        """After a project's rows went (with their deletion events, Projects.delete): its blobs."""
        await self.remove_blobs(keys)

    async def remove_blobs(self, keys: builtins.list[str]) -> None:  # `list` is a method here
        def remove() -> None:
            for key in keys:
                if key.startswith("uploads/"):
                    self._delete_upload_bytes(f"{key}.part")
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
        readable = dataset.state == SUCCEEDED or (dataset.appending_upload_id and dataset.row_count > 0)
        if not readable:
            if dataset.state == FAILED:
                raise FailedPrecondition(f"{name} failed to import: {dataset.error}")
            raise FailedPrecondition(f"{name} is still importing ({dataset.state.lower()}); its rows are not ready yet")
        return await asyncio.to_thread(lambda: pq.ParquetFile(self._blobs.open_input_file(rows_key(dataset.id))))

    # --- the import job --------------------------------------------------------------

    async def _publish(self, row: Dataset) -> None:
        await self._bus.publish_job_state(KIND, row.id, messages.dataset(row).SerializeToString())

    def import_job(self) -> JobKind[Dataset]:
        """The import as a kind of job of the shared runner (services/common/runner.py)."""
        return JobKind(
            kind=KIND, model=Dataset, publish=self._publish, run=self.run_import, what="importing this file",
            clean_up=self._clean_up_import, give_up=self._give_up_import, is_open=_import_open,
            progress_interval=self._settings.progress_interval,
        )

    async def run_import(self, job: Job, reporter: JobReporter[Dataset]) -> None:
        """Import one dataset's upload, or append an upload's rows to it. The Parquet file
        is written beside the live one and moved into place only when every row was read; a
        redelivered message (the worker died) starts over."""
        payload = job.payload
        dataset_id = job.id
        append_id = str(payload.get("append", ""))
        async with self._sessions() as session:
            dataset = await session.get(Dataset, dataset_id)
        if dataset is None or not _import_open(dataset, payload):
            return
        interval = self._settings.progress_interval
        stop = threading.Event()
        latest = [0, 0, 0]

        def on_progress(rows: int, total: int, read: int) -> None:
            if stop.is_set():
                raise ImportStopped()
            latest[0], latest[1], latest[2] = rows, total, read

        async def pump() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await reporter.progress(latest[0], total=latest[1] or None, extra={"parsed_bytes": latest[2]})
                except (JobGone, JobCancelled):
                    stop.set()
                    return

        try:
            await reporter.start("appending" if append_id else "parsing", total=0)
        except (JobGone, JobCancelled):
            return
        if append_id:
            given = payload.get("options") or {}
            options = Options(
                format=str(given.get("format", "")),
                delimiter=str(given.get("delimiter", "")),
                quote_char=str(given.get("quote_char", "")),
                encoding=str(given.get("encoding", "")),
                compression=str(given.get("compression", "")),
            )
            async with self._sessions() as session:
                upload = await session.get(Upload, append_id)
            if upload is None:
                await self._end_append(reporter, "the upload to append is gone (it expired or was deleted)")
                return
            source, filename, size = part_key(append_id), upload.filename, upload.size_bytes
        else:
            options = Options(
                format=dataset.format, delimiter=dataset.delimiter, quote_char=dataset.quote_char,
                encoding=dataset.encoding, compression=dataset.compression,
            )
            source, filename, size = part_key(dataset.upload_id), dataset.source_filename, dataset.size_bytes
        target, live = next_rows_key(dataset_id), rows_key(dataset_id)

        async def save_checkpoint(checkpoint: Checkpoint | dict[str, Any]) -> None:
            saved = checkpoint.as_dict() if isinstance(checkpoint, Checkpoint) else checkpoint

            async def write() -> None:
                async with self._sessions() as session:
                    await session.execute(
                        update(Dataset).where(Dataset.id == dataset_id).values(import_checkpoint=saved)
                    )
                    await session.commit()

            await through_outages(write, f"saving the import checkpoint of dataset {dataset_id}")

        finished = None if append_id else (dataset.import_checkpoint or {}).get("finished")
        if finished is not None:
            # killed after every row was written: only the last steps are left
            log.info("resuming the import of dataset %s after its last row", dataset_id)
            await self._finish_import(dataset_id, source, target, live, finished, reporter)
            return

        # An import (not an append) commits its rows part by part; a re-delivered one resumes.
        parts = None if append_id else ImportParts(
            self._blobs, dataset_id, self._settings.import_part_rows, save_checkpoint, asyncio.get_running_loop()
        )
        resume = None if append_id else Checkpoint.of(dataset.import_checkpoint)
        if resume is not None and await asyncio.to_thread(lambda: any(map(self._blobs.exists, (target, live)))):
            # killed while its parts became the dataset's file: they are no more, read it all again
            resume = None
        if resume is not None:
            log.info("resuming the import of dataset %s after row %d (%d parts)", dataset_id, resume.rows, resume.parts)

        def work() -> Any:
            append_to = pq.ParquetFile(self._blobs.open_input_file(live)) if append_id else None
            try:
                result = import_file(
                    lambda: self._blobs.open_input_file(source),
                    lambda: self._blobs.open_output(target),
                    filename, size, on_progress=on_progress, options=options,
                    limits=self._settings.limits, append_to=append_to, parts=parts, resume=resume,
                )
            finally:
                if append_to is not None:
                    append_to.close()
            done = result.parts
            if parts is not None and done is not None:
                if done.parts == 1:
                    self._blobs.move(parts.key(done.tag, 0), target)
                else:
                    assemble(parts, done, lambda: self._blobs.open_output(target))
            return result

        pumping = asyncio.create_task(pump())
        failure: str | None = None
        try:
            result = await asyncio.to_thread(work)
        except ImportStopped:  # the dataset was deleted meanwhile
            await asyncio.to_thread(self._blobs.delete, target)
            await asyncio.to_thread(self._delete_upload_bytes, source)
            return
        except ImportFailed as exc:
            failure = str(exc)
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("import of dataset %s failed (ref %s)", dataset_id, ref)
            failure = f"the import failed unexpectedly (ref {ref}); the server log has the details"
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
        if failure is not None:
            # Nothing of it stays behind, and that is so before anyone sees the failure.
            await asyncio.to_thread(self._blobs.delete, target)
            await asyncio.to_thread(self._delete_upload_bytes, source)
            if append_id:
                await self._end_append(reporter, f"appending {filename} failed: {failure}")
            else:
                await self.remove_blobs([dataset_prefix(dataset_id)])
                await reporter.fail(failure)
            return
        fields: dict[str, Any] = {
            "format": result.format, "delimiter": result.delimiter, "quote_char": result.quote_char,
            "encoding": result.encoding, "compression": result.compression, "row_count": result.row_count,
            "columns": [c.as_dict() for c in result.columns], "done": result.appended_rows or result.row_count,
            "total": result.appended_rows or result.row_count, "parsed_bytes": size,
        }
        if append_id:
            fields.update(appending_upload_id="", append_error="", size_bytes=dataset.size_bytes + size)
        else:
            # what success records, kept first: a kill from here on leaves only the last steps
            await save_checkpoint({"finished": fields})
        await self._finish_import(dataset_id, source, target, live, fields, reporter)

    async def _finish_import(
        self, dataset_id: str, source: str, target: str, live: str, fields: dict[str, Any],
        reporter: JobReporter[Dataset],
    ) -> None:
        """Every row was read: only now does the file take the live place; the upload and the
        import's parts go, and the dataset succeeds. Each step may be done again after a kill."""

        def publish() -> None:
            if self._blobs.exists(target) or not self._blobs.exists(live):
                self._blobs.move(target, live)
            self._delete_upload_bytes(source)
            self._blobs.delete_dir(import_parts_prefix(dataset_id))

        await asyncio.to_thread(publish)
        try:
            await reporter.succeed(**fields, import_checkpoint=None)
        except (JobGone, JobCancelled):
            await self.remove_blobs([dataset_prefix(dataset_id)])

    async def _give_up_import(self, reporter: JobReporter[Dataset], payload: dict[str, Any], message: str) -> None:
        """An import that failed or was given up ends FAILED; an append leaves the dataset as
        it was (SUCCEEDED, its earlier rows) and says why."""
        append_id = str(payload.get("append", ""))
        if not append_id:
            await reporter.fail(message)
            return
        async with self._sessions() as session:
            dataset = await session.get(Dataset, str(payload.get("id", "")))
        if dataset is not None and dataset.appending_upload_id == append_id:
            await self._end_append(reporter, message)

    async def _clean_up_import(self, dataset_id: str, payload: dict[str, Any]) -> None:
        if not payload.get("append"):
            await self.remove_blobs([dataset_prefix(dataset_id)])

    async def _end_append(self, reporter: JobReporter[Dataset], message: str) -> None:
        """A failed append leaves the dataset as it was (SUCCEEDED, earlier rows) and says why."""
        with contextlib.suppress(JobGone, JobCancelled):
            await reporter.succeed(appending_upload_id="", append_error=message, parsed_bytes=0)
