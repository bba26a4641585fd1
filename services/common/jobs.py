"""Jobs: the state columns every job-made resource carries, progress reporting (Postgres
row + NATS event, throttled), cancellation, and the Watch stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, overload

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import JSON, DateTime, Float, Integer, String, Text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from embedviz.v1 import job_pb2
from services.common import telemetry
from services.common.db import through_outages
from services.common.errors import Unavailable
from services.common.events import EventBus

log = logging.getLogger(__name__)

PENDING = "PENDING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
TERMINAL_PROTO = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobColumns:
    """Mixin for a table whose rows are made by a job (datasets, embeddings, projections)."""

    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str] = mapped_column(String(64), default="")
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    rate: Mapped[float] = mapped_column(Float, default=0.0)
    eta_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Kept by the job runner (services/common/runner.py): the worker's last sign of life,
    # the attempts so far, the last retried error, the worker holding it, its message.
    heartbeat_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    worker: Mapped[str] = mapped_column(String(200), default="", server_default="")
    work: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


@overload
def timestamp(value: datetime) -> Timestamp: ...
@overload
def timestamp(value: None) -> None: ...
@overload
def timestamp(value: datetime | None) -> Timestamp | None: ...
def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def job_to_proto(row: JobColumns) -> job_pb2.Job:
    job = job_pb2.Job(
        state=job_pb2.JobState.Value(f"JOB_STATE_{row.state}"),
        progress=row.progress or 0.0,
        stage=row.stage or "",
        done=row.done or 0,
        total=row.total or 0,
        rate=row.rate or 0.0,
        eta_seconds=row.eta_seconds or 0.0,
        error=row.error or "",
    )
    for field in ("create_time", "start_time", "end_time", "update_time"):
        ts = timestamp(getattr(row, field))
        if ts is not None:
            getattr(job, field).CopyFrom(ts)
    return job


class JobCancelled(Exception):
    """Raised in a worker when the user cancelled the job it is working on."""


class JobGone(Exception):
    """Raised in a worker when the job's resource was deleted while it ran."""


Row = TypeVar("Row", bound=JobColumns)


class JobReporter(Generic[Row]):
    """Records a job's progress in its row and publishes the resource on NATS.

    Progress writes are throttled; state changes are written at once. Every write also
    reads the row back, which is how a worker learns that the job was cancelled."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        model: type[Row],
        row_id: Any,
        publish: Callable[[Row], Awaitable[None]],
        min_interval: float = 0.5,
        kind: str = "",
    ) -> None:
        self._sessions = sessions
        self._kind = kind  # for /metrics: the rows per second of running jobs of this kind
        self._model = model
        self._id = row_id
        self._publish = publish
        self._min_interval = min_interval
        self._last_write = 0.0
        self._window: deque[tuple[float, int]] = deque(maxlen=20)

    async def _update(self, **fields: Any) -> Row:
        async def write() -> Row:
            async with self._sessions() as session:
                row = await session.get(self._model, self._id, with_for_update=True)
                if row is None:
                    raise JobGone(f"{self._model.__name__} {self._id} no longer exists")
                if row.state == CANCELLED:
                    raise JobCancelled()
                for key, value in fields.items():
                    setattr(row, key, value)
                row.update_time = utcnow()
                await session.commit()
                return row

        # A job outlives a PostgreSQL restart: its record waits for the database.
        row = await through_outages(write, f"recording {self._model.__name__} {self._id}")
        await self._publish(row)
        self._last_write = time.monotonic()
        return row

    async def start(self, stage: str, total: int = 0, done: int = 0) -> Row:
        self._window.clear()
        self._window.append((time.monotonic(), done))
        fields: dict[str, Any] = {"state": RUNNING, "stage": stage, "total": total, "done": done, "error": ""}

        async def first_start() -> bool:
            async with self._sessions() as session:
                row = await session.get(self._model, self._id)
                return row is not None and row.start_time is None

        if await through_outages(first_start, f"starting {self._model.__name__} {self._id}"):
            fields["start_time"] = utcnow()
        return await self._update(**fields)

    async def progress(
        self,
        done: int,
        total: int | None = None,
        stage: str | None = None,
        force: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """`extra`: more columns of the row to write with this progress (e.g. bytes read)."""
        now = time.monotonic()
        self._window.append((now, done))
        if not force and stage is None and now - self._last_write < self._min_interval:
            return
        fields: dict[str, Any] = {**(extra or {}), "done": done}
        if total is not None:
            fields["total"] = total
        if stage is not None:
            fields["stage"] = stage
        first_time, first_done = self._window[0]
        rate = (done - first_done) / (now - first_time) if now > first_time else 0.0
        fields["rate"] = max(rate, 0.0)
        if self._kind:
            telemetry.ROW_RATES.report(self._kind, id(self), done, fields["rate"])
        row_total = total if total is not None else None
        if row_total is None:

            async def read_total() -> int:
                async with self._sessions() as session:
                    row = await session.get(self._model, self._id)
                    return row.total if row is not None else 0

            row_total = await through_outages(read_total, f"reading {self._model.__name__} {self._id}")
        if row_total:
            fields["progress"] = min(done / row_total, 1.0)
            fields["eta_seconds"] = (row_total - done) / rate if rate > 0 else 0.0
        await self._update(**fields)

    def close(self) -> None:
        """This run of the job is over: its rate no longer counts on /metrics."""
        if self._kind:
            telemetry.ROW_RATES.end(self._kind, id(self))

    async def succeed(self, **fields: Any) -> Row:
        return await self._update(
            state=SUCCEEDED, progress=1.0, eta_seconds=0.0, end_time=utcnow(), stage="done", **fields
        )

    async def fail(self, message: str) -> Row | None:
        try:
            return await self._update(state=FAILED, error=message, end_time=utcnow(), eta_seconds=0.0)
        except (JobCancelled, JobGone):
            return None


async def cancel_job(
    sessions: async_sessionmaker[AsyncSession], model: type[Row], row_id: Any
) -> Row | None:
    """Mark a job cancelled unless it already ended; returns the row."""
    async with sessions() as session:
        row = await session.get(model, row_id, with_for_update=True)
        if row is None:
            return None
        if row.state not in TERMINAL:
            row.state = CANCELLED
            row.end_time = utcnow()
            row.update_time = utcnow()
            row.eta_seconds = 0.0
        await session.commit()
        return row


M = TypeVar("M", bound=Message)
POLL_WITHOUT_EVENTS_S = 2.0


async def watch(
    bus: EventBus,
    kind: str,
    job_id: str,
    load: Callable[[], Awaitable[M]],
    decode: Callable[[bytes], M],
    job_of: Callable[[M], job_pb2.Job],
) -> AsyncGenerator[M, None]:
    """Current state first, then every change, ending after a terminal state. When
    nothing happens for a while the current state is sent again as a heartbeat."""
    current = await load()
    yield current
    if job_of(current).state in TERMINAL_PROTO:
        return
    last_update = job_of(current).update_time.ToNanoseconds()
    events = bus.follow_events(kind, job_id)
    try:
        async for data in events:
            message = await load() if data is None else decode(data)
            job = job_of(message)
            if data is not None and job.update_time.ToNanoseconds() < last_update:
                continue
            last_update = job.update_time.ToNanoseconds()
            yield message
            if job.state in TERMINAL_PROTO:
                return
    except Unavailable:
        # NATS is away: the row in PostgreSQL is the truth, so read it now and then instead
        # of ending the stream; the job goes on either way.
        log.warning("%s %s: no live events; following its record instead", kind, job_id)
    finally:
        await events.aclose()
    while True:
        await asyncio.sleep(POLL_WITHOUT_EVENTS_S)
        message = await load()
        job = job_of(message)
        if job.update_time.ToNanoseconds() == last_update and job.state not in TERMINAL_PROTO:
            continue
        last_update = job.update_time.ToNanoseconds()
        yield message
        if job.state in TERMINAL_PROTO:
            return
