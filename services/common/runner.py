"""The one job runner: every kind of job (import, embedding, map, follow-up) is a
`run(job, reporter)` handed to it, and the runner owns everything around that call.

- start: the job's row is claimed (PENDING → RUNNING, its attempt counted, this worker
  named, the heartbeat set); a duplicate message for a job another live worker holds (its
  heartbeat younger than 2/3 of the ack wait; a live one beats every 1/3) is dropped;
- heartbeat: while `run` works, the row's `heartbeat_time` is refreshed every
  `heartbeat` seconds; the same write notices a cancel or a deletion, and a job that does
  not stop by itself within `cancel_grace` seconds is cancelled (its task) and cleaned up;
- failure: an error the kind's classifier calls retryable is kept on the row
  (`last_error`) and the message is retried with backoff; any other error ends the job
  FAILED with a message a person can read (a DomainError's own, else a reference to the
  log) and its partial output cleaned up;
- last delivery: the job ends FAILED with its last error (or, when its worker died each
  time, says so) instead of being dropped by JetStream with its row RUNNING;
- the sweeper (`JobSweeper`) catches what no delivery will: a RUNNING job whose
  heartbeat is older than `stale_after` is queued again while it has deliveries left, and
  otherwise FAILED ("the worker stopped responding …").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic

import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common import telemetry
from services.common.config import SettingsError
from services.common.consumer import (
    Classify,
    Consumer,
    ConsumerSettings,
    Delivery,
    describe_for_person,
    json_object,
    retryable,
)
from services.common.db import through_outages
from services.common.errors import DomainError
from services.common.events import WORK_STREAM, EventBus, work_subject
from services.common.jobs import (
    CANCELLED,
    FAILED,
    PENDING,
    RUNNING,
    TERMINAL,
    JobCancelled,
    JobGone,
    JobReporter,
    Row,
    utcnow,
)
from services.common.outbox import positive_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerSettings:
    """How jobs are run and watched. `stale_after` must be several times `ack_wait`: a
    worker that died is replaced by a redelivery after `ack_wait`, and only a job nobody
    will deliver again is for the sweeper."""

    ack_wait: float = 60.0
    max_deliver: int = 10
    first_retry: float = 5.0
    stale_after: float = 300.0
    sweep_every: float = 30.0
    cancel_grace: float = 10.0

    @property
    def heartbeat(self) -> float:
        return self.ack_wait / 3

    @classmethod
    def from_env(cls, ack_wait: float | None = None) -> RunnerSettings:
        """EMBEDVIZ_JOB_ACK_WAIT (60), EMBEDVIZ_JOB_STALE_AFTER (5 × ack wait),
        EMBEDVIZ_JOB_SWEEP_EVERY (stale after / 10), EMBEDVIZ_JOB_CANCEL_GRACE (10)."""
        wait = ack_wait if ack_wait is not None else positive_seconds("EMBEDVIZ_JOB_ACK_WAIT", 60.0)
        stale = positive_seconds("EMBEDVIZ_JOB_STALE_AFTER", 5 * wait)
        if stale < 2 * wait:
            raise SettingsError(
                f"EMBEDVIZ_JOB_STALE_AFTER is {stale:g} s; it must be at least twice the ack wait ({wait:g} s), "
                "or jobs that are merely waiting for a redelivery are taken for dead"
            )
        return cls(
            ack_wait=wait,
            stale_after=stale,
            sweep_every=positive_seconds("EMBEDVIZ_JOB_SWEEP_EVERY", max(1.0, stale / 10)),
            cancel_grace=positive_seconds("EMBEDVIZ_JOB_CANCEL_GRACE", 10.0),
        )

    def consumer(self) -> ConsumerSettings:
        return ConsumerSettings(
            ack_wait=self.ack_wait, batch=1, max_deliver=self.max_deliver, first_retry=self.first_retry
        )


@dataclass(frozen=True)
class Job:
    """One delivery of a job's message, as `run` gets it."""

    id: str
    owner: str
    payload: dict[str, Any]
    delivery: Delivery
    attempt: int  # this job's attempts so far, this one included


# A kind's work: given the job and its reporter, it makes the result (and calls
# reporter.succeed), raises JobCancelled / JobGone when told to stop, and raises anything else.
JobRun = Callable[[Job, JobReporter[Row]], Coroutine[Any, Any, None]]


def runner_columns() -> list[sa.Column[Any]]:
    """The columns the runner keeps on every job table (JobColumns), for the migrations
    that add them (each service's `0004_job_runner`)."""
    return [
        sa.Column("heartbeat_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
        sa.Column("worker", sa.String(200), nullable=False, server_default=""),
        sa.Column("work", sa.JSON, nullable=True),
    ]


def crash_message(what: str, attempts: int, last_error: str | None) -> str:
    """What a person reads when a job was given up after its worker failed again and again."""
    if last_error:
        return f"{what} failed {attempts} times and was given up; the last error: {last_error}"
    return (f"the worker stopped {attempts} times while {what} (a crash or a restart each "
            "time); it was given up. Try again, perhaps with less data")


def stale_message(what: str, seconds: float, attempts: int) -> str:
    return (f"the worker stopped responding while {what} (no sign of life for {seconds:.0f} s, "
            f"after {attempts} attempts); it was given up. Try again, perhaps with less data")


def _open(row: Any, payload: dict[str, Any]) -> bool:
    return row.state not in TERMINAL


def _same(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


@dataclass(frozen=True)
class JobKind(Generic[Row]):
    """One kind of job. `what` completes "the worker stopped while …" ("importing this
    file"). `parallel`: several workers work on one job at once (the embedding's shards),
    so no worker holds it alone and each message counts its own deliveries."""

    kind: str
    model: type[Row]
    publish: Callable[[Row], Awaitable[None]]
    run: JobRun[Row]
    what: str
    clean_up: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
    # Ends a job that is given up; default: FAILED with the message.
    give_up: Callable[[JobReporter[Row], dict[str, Any], str], Awaitable[None]] | None = None
    # Is there still work for this message? Default: the job has not ended.
    is_open: Callable[[Row, dict[str, Any]], bool] = _open
    # The message to queue again for a stalled job (from the one its last run got).
    requeue: Callable[[dict[str, Any]], dict[str, Any]] = _same
    parallel: bool = False
    classify: Classify = retryable
    progress_interval: float = 0.5


@dataclass
class _Claim:
    attempt: int
    give_up: bool
    last_error: str


@dataclass
class _Running:
    cancelled_by_runner: bool = False


class JobRunner(Generic[Row]):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: EventBus,
        kind: JobKind[Row],
        settings: RunnerSettings,
        slot: int = 0,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self.kind = kind
        self.settings = settings
        self.worker = f"{socket.gethostname()}/{os.getpid()}/{slot}"

    def consumer(self) -> Consumer[dict[str, Any]]:
        return Consumer(
            self._bus,
            stream=WORK_STREAM,
            subject=work_subject(self.kind.kind),
            durable=f"{self.kind.kind}-workers",
            handler=self.handle,
            decode=json_object,
            classify=self.kind.classify,
            on_last_delivery=self.handle,
            settings=self.settings.consumer(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """A background task of the service: take this kind's jobs until `stop`."""
        await self.consumer().run(stop)

    def reporter(self, job_id: str) -> JobReporter[Row]:
        return JobReporter(self._sessions, self.kind.model, job_id, self.kind.publish,
                           min_interval=self.kind.progress_interval, kind=self.kind.kind)

    # --- one delivery ------------------------------------------------------------------------

    async def handle(self, payload: dict[str, Any], delivery: Delivery) -> None:
        job_id = str(payload.get("id", ""))
        name = f"{self.kind.kind} {job_id}"
        claim = await through_outages(lambda: self._claim(job_id, payload, delivery), f"starting {name}")
        if claim is None:
            return
        owner = str(payload.get("owner", ""))
        job = Job(job_id, owner, payload, delivery, claim.attempt)
        if claim.give_up:
            log.error("%s: attempt %d is the last; giving it up", name, claim.attempt)
            with telemetry.job_run(self.kind.kind, job_id, claim.attempt) as record:
                record.outcome = "given_up"
                await self._give_up(job, crash_message(self.kind.what, claim.attempt - 1,
                                                       delivery.last_error or claim.last_error or None))
            return
        with telemetry.job_run(self.kind.kind, job_id, claim.attempt) as record:
            await self._run(job, name, record)

    async def _run(self, job: Job, name: str, record: telemetry.JobRunRecord) -> None:
        running = _Running()
        reporter = self.reporter(job.id)
        task = asyncio.create_task(self.kind.run(job, reporter))
        beat = asyncio.create_task(self._heartbeat(job.id, task, running))
        try:
            await task
            record.outcome = "succeeded"
        except asyncio.CancelledError:
            if running.cancelled_by_runner and not _cancelling():
                log.info("%s stopped: cancelled or deleted", name)
                record.outcome = "cancelled"
                await self._clean_up(job)
                return
            task.cancel()
            raise  # this worker is stopping: the message goes back to the queue at once
        except (JobCancelled, JobGone):
            log.info("%s stopped: cancelled or deleted", name)
            record.outcome = "cancelled"
            await self._clean_up(job)
        except Exception as exc:
            if self.kind.classify(exc) and not job.delivery.is_last:
                record.outcome = "retried"
                await self._note_error(job.id, describe_for_person(exc))
                raise  # the consumer retries it later
            record.outcome = "failed"
            await self._fail(job, exc)
        finally:
            reporter.close()
            beat.cancel()
            with contextlib.suppress(BaseException):
                await beat
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release(job.id))

    async def _claim(self, job_id: str, payload: dict[str, Any], delivery: Delivery) -> _Claim | None:
        async with self._sessions() as session:
            row = await session.get(self.kind.model, job_id, with_for_update=True)
            if row is None or not self.kind.is_open(row, payload):
                return None  # deleted, cancelled or done before a worker got to it
            r: Any = row
            now = utcnow()
            exclusive = not self.kind.parallel
            if (exclusive and r.state == RUNNING and r.worker and r.worker != self.worker
                    and r.heartbeat_time is not None
                    and now - r.heartbeat_time < timedelta(seconds=self.settings.ack_wait * 2 / 3)):
                log.info("%s %s: another worker (%s) holds it; this message is a duplicate",
                         self.kind.kind, job_id, r.worker)
                return None
            r.attempts = (r.attempts or 0) + 1 if exclusive else max(r.attempts or 0, delivery.number)
            give_up = delivery.is_last or r.attempts >= self.settings.max_deliver
            if r.state == PENDING:
                r.state = RUNNING
                r.start_time = r.start_time or now
                r.update_time = now
            r.heartbeat_time = now
            r.worker = self.worker if exclusive else ""
            if exclusive or "shard" not in payload:
                r.work = self.kind.requeue(payload)
            claim = _Claim(r.attempts, give_up, r.last_error or "")
            await session.commit()
        await self.kind.publish(row)
        return claim

    async def _heartbeat(self, job_id: str, task: asyncio.Task[None], running: _Running) -> None:
        """Refresh the heartbeat; a job cancelled or deleted that does not stop by itself
        within the grace period is cancelled here."""
        model = self.kind.model
        loop = asyncio.get_running_loop()
        deadline: float | None = None

        async def beat() -> bool:
            async with self._sessions() as session:
                row: Any = await session.get(model, job_id, with_for_update=True)
                if row is None or row.state == CANCELLED:
                    return False
                row.heartbeat_time = utcnow()
                await session.commit()
                return True

        while not task.done():
            await asyncio.sleep(self.settings.heartbeat if deadline is None else 0.5)
            try:
                alive = await beat()
            except Exception as exc:  # PostgreSQL away: the job's own writes wait it out
                log.warning("%s %s: heartbeat not written (%s)", self.kind.kind, job_id, type(exc).__name__)
                continue
            if alive:
                continue
            if deadline is None:
                deadline = loop.time() + self.settings.cancel_grace
                log.info("%s %s was cancelled or deleted; it has %.0f s to stop", self.kind.kind, job_id,
                         self.settings.cancel_grace)
            elif loop.time() >= deadline and not task.done():
                log.warning("%s %s did not stop by itself after a cancel; stopping it", self.kind.kind, job_id)
                running.cancelled_by_runner = True
                task.cancel()
                return

    async def _note_error(self, job_id: str, message: str) -> None:
        async def write() -> None:
            async with self._sessions() as session:
                row: Any = await session.get(self.kind.model, job_id, with_for_update=True)
                if row is not None:
                    row.last_error = message
                    await session.commit()

        with contextlib.suppress(Exception):
            await through_outages(write, f"recording the error of {self.kind.kind} {job_id}")

    async def _release(self, job_id: str) -> None:
        """This worker no longer holds the job (it ended, or goes back to the queue)."""
        if self.kind.parallel:
            return
        async with self._sessions() as session:
            row: Any = await session.get(self.kind.model, job_id, with_for_update=True)
            if row is not None and row.worker == self.worker:
                row.worker = ""
                await session.commit()

    async def _clean_up(self, job: Job) -> None:
        if self.kind.clean_up is None:
            return
        try:
            await self.kind.clean_up(job.id, job.payload)
        except Exception:
            log.exception("cleaning up after %s %s failed", self.kind.kind, job.id)

    async def _fail(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, DomainError):
            message = exc.message
            log.warning("%s %s failed: %s", self.kind.kind, job.id, message)
        else:
            ref = uuid.uuid4().hex[:12]
            log.error("%s %s failed (ref %s)", self.kind.kind, job.id, ref, exc_info=exc)
            message = f"{self.kind.what} failed unexpectedly (ref {ref}); the server log has the details"
        await self._give_up(job, message)

    async def _give_up(self, job: Job, message: str) -> None:
        """End the job FAILED with `message` (or as the kind ends a job it gives up)."""
        await self._clean_up(job)
        reporter = self.reporter(job.id)
        with contextlib.suppress(JobCancelled, JobGone):
            if self.kind.give_up is not None:
                await self.kind.give_up(reporter, job.payload, message)
            else:
                await reporter.fail(message)

    # --- stalled jobs ------------------------------------------------------------------------

    async def sweep(self) -> list[tuple[str, str]]:
        """Queue again, or fail, every RUNNING job of this kind whose heartbeat stopped.
        Returns (job id, "requeued" | "failed") for what it did."""
        model: Any = self.kind.model
        limit = utcnow() - timedelta(seconds=self.settings.stale_after)
        seen = func.coalesce(model.heartbeat_time, model.update_time)
        done: list[tuple[str, str]] = []
        requeue: list[tuple[str, dict[str, Any]]] = []
        give_up: list[tuple[str, dict[str, Any], str]] = []
        async with self._sessions() as session:
            rows = (await session.scalars(
                select(model).where(model.state == RUNNING, seen < limit).with_for_update(skip_locked=True)
            )).all()
            for row in rows:
                payload = dict(row.work or {"id": row.id, "owner": row.owner})
                attempts = int(row.attempts or 0)
                if attempts < self.settings.max_deliver - 1:
                    row.heartbeat_time = utcnow()  # the new message gets a whole period to start
                    row.worker = ""
                    if self.kind.parallel:
                        row.attempts = attempts + 1  # each re-queue counts, or it could go on for ever
                    requeue.append((str(row.id), payload))
                else:
                    message = stale_message(self.kind.what, self.settings.stale_after, attempts)
                    give_up.append((str(row.id), payload, message))
            await session.commit()
        for job_id, payload in requeue:
            log.warning("%s %s: its worker stopped responding; queued again", self.kind.kind, job_id)
            await self._bus.enqueue(self.kind.kind, payload)
            done.append((job_id, "requeued"))
        for job_id, payload, message in give_up:
            log.error("%s %s: its worker stopped responding and no attempts are left; failed", self.kind.kind, job_id)
            delivery = Delivery(self.settings.max_deliver, self.settings.max_deliver, work_subject(self.kind.kind))
            await self._give_up(Job(job_id, str(payload.get("owner", "")), payload, delivery, 0), message)
            done.append((job_id, "failed"))
        return done


class JobSweeper:
    """One supervised task per service that runs jobs: every `sweep_every` seconds, each
    kind's stalled jobs are queued again or failed (JobRunner.sweep)."""

    def __init__(self, runners: Sequence[JobRunner[Any]], every: float) -> None:
        self._runners = list(runners)
        self._every = every

    async def sweep(self) -> list[tuple[str, str]]:
        done: list[tuple[str, str]] = []
        for runner in self._runners:
            try:
                done += await runner.sweep()
            except Exception as exc:  # PostgreSQL or NATS away: the next round tries again
                log.warning("sweeping %s jobs failed: %s", runner.kind.kind, type(exc).__name__)
        return done

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sweep()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._every)


def _cancelling() -> bool:
    """Is the current task itself being cancelled (this worker stopping)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


__all__ = [
    "FAILED",
    "Job",
    "JobKind",
    "JobRunner",
    "JobSweeper",
    "RunnerSettings",
    "crash_message",
    "stale_message",
]
