"""The shared consumer and job runner on a real nats-server and PostgreSQL: whatever a
worker does on every delivery (fails, dies, hangs and is killed), its job ends FAILED with
a message a person can read, never RUNNING; a job whose worker was killed is queued
again by the sweeper and finishes once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.common.consumer import Consumer, ConsumerSettings, Delivery, json_object
from services.common.db import Database
from services.common.events import EVENTS_STREAM, EventBus
from services.common.jobs import FAILED, PENDING, RUNNING, SUCCEEDED
from services.common.runner import JobSweeper
from services.stack import Stack
from tests.common import runner_jobs
from tests.common.runner_jobs import CountingJob

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def database_url(infra: Stack) -> str:
    return await runner_jobs.new_database(infra.pg_dsn, infra.database_url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.close()


async def new_job(db: Database, bus: EventBus, kind: str) -> str:
    job_id = uuid.uuid4().hex[:12]
    async with db.sessions() as session:
        session.add(CountingJob(id=job_id, state=PENDING))
        await session.commit()
    await bus.enqueue(kind, {"id": job_id, "owner": "someone"})
    return job_id


async def job_of(db: Database, job_id: str) -> CountingJob:
    async with db.sessions() as session:
        row = await session.get(CountingJob, job_id)
    assert row is not None
    return row


async def start_worker(infra: Stack, database_url: str, behaviour: str, kind: str, marker: Path,
                       max_deliver: int = 3, seconds: float = 8) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "build/gen/python")]),
           "RUNNER_TEST_MARKER": str(marker), "RUNNER_TEST_SECONDS": str(seconds)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.common.runner_jobs", infra.nats_url, database_url, behaviour, kind,
        str(max_deliver), env=env, cwd=str(REPO),
    )


def attempts_noted(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


async def until(condition: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def run_to_the_end(infra: Stack, database_url: str, db: Database, behaviour: str, marker: Path) -> CountingJob:
    """One job, and a worker process that does `behaviour` on each delivery until it ended."""
    bus = await EventBus.connect(infra.nats_url, name="test-runner")
    kind = f"test-{behaviour}-{uuid.uuid4().hex[:6]}"
    try:
        job_id = await new_job(db, bus, kind)
        worker = await start_worker(infra, database_url, behaviour, kind, marker, max_deliver=3, seconds=10)
        await until(lambda: _ended(db, job_id), 30, "the job to end")
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), timeout=20)
    finally:
        await bus.close()
    return await job_of(db, job_id)


async def test_a_job_that_fails_every_time_ends_failed_with_its_last_error(
    infra: Stack, database_url: str, db: Database, tmp_path: Path
) -> None:
    row = await run_to_the_end(infra, database_url, db, "unavailable", tmp_path / "attempts")
    assert attempts_noted(tmp_path / "attempts") == ["1", "2"], "the last delivery is given up, not run"
    assert row.state == FAILED
    assert row.error == ("counting the rows failed 2 times and was given up; "
                         "the last error: the dataset service is away")


async def test_a_job_with_a_bad_request_fails_at_once_with_its_message(
    infra: Stack, database_url: str, db: Database, tmp_path: Path
) -> None:
    row = await run_to_the_end(infra, database_url, db, "invalid", tmp_path / "attempts")
    assert attempts_noted(tmp_path / "attempts") == ["1"], "a verdict on the request is not retried"
    assert (row.state, row.error) == (FAILED, "column 'body' not found; the dataset has: title, text")


async def test_a_worker_that_crashes_on_every_delivery_leaves_its_job_failed_not_running(
    infra: Stack, database_url: str, db: Database, tmp_path: Path
) -> None:
    bus = await EventBus.connect(infra.nats_url, name="test-runner")
    kind = f"test-dies-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "attempts"
    try:
        job_id = await new_job(db, bus, kind)
    finally:
        await bus.close()
    exits = []
    deadline = time.monotonic() + 90
    while not await _ended(db, job_id):  # a supervisor that restarts the worker each time it dies
        assert time.monotonic() < deadline, f"never ended; worker exits: {exits}"
        worker = await start_worker(infra, database_url, "dies", kind, marker, max_deliver=3, seconds=6)
        exits.append(await asyncio.wait_for(worker.wait(), timeout=30))
    row = await job_of(db, job_id)
    assert exits[:2] == [17, 17]
    assert attempts_noted(marker) == ["1", "2"]
    assert row.state == FAILED
    assert row.error.startswith("the worker stopped 2 times while counting the rows (a crash or a restart each time)")


async def test_a_killed_worker_job_is_queued_again_by_the_sweeper_and_done_once(
    infra: Stack, database_url: str, db: Database, tmp_path: Path
) -> None:
    """The worker is SIGKILLed mid-job and the job's message is gone for good (here: the
    durable consumer is deleted with it, as when NATS lost its data): only the sweeper can
    bring the job back."""
    bus = await EventBus.connect(infra.nats_url, name="test-runner")
    kind = f"test-hangs-{uuid.uuid4().hex[:6]}"
    hung, done = tmp_path / "hung", tmp_path / "done"
    try:
        job_id = await new_job(db, bus, kind)
        worker = await start_worker(infra, database_url, "hangs", kind, hung, max_deliver=5, seconds=60)
        await until(lambda: _state_is(db, job_id, RUNNING), 30, "the job to run")
        worker.kill()
        await worker.wait()
        await bus.js.delete_consumer("EMBEDVIZ_WORK", f"{kind}-workers")  # its message is lost with it
        await bus.js.purge_stream("EMBEDVIZ_WORK", subject=f"work.{kind}")
        before = await job_of(db, job_id)
        assert before.state == RUNNING and before.heartbeat_time is not None

        runner = _runner(db, bus, kind, max_deliver=5)
        sweeper = JobSweeper([runner], every=0.5)
        assert await sweeper.sweep() == [], "a fresh heartbeat is left alone"
        await asyncio.sleep(runner.settings.stale_after + 0.5)
        assert await sweeper.sweep() == [(job_id, "requeued")]

        finisher = await start_worker(infra, database_url, "succeeds", kind, done, max_deliver=5, seconds=60)
        await until(lambda: _ended(db, job_id), 30, "the job to end")
        finisher.send_signal(signal.SIGTERM)
        await asyncio.wait_for(finisher.wait(), timeout=20)
    finally:
        await bus.close()
    row = await job_of(db, job_id)
    assert (row.state, row.done, row.error) == (SUCCEEDED, 10, "")
    assert attempts_noted(hung) == ["1"] and attempts_noted(done) == ["2"], "run once more, not twice"


async def test_a_stalled_job_without_attempts_left_is_failed_by_the_sweeper(
    infra: Stack, database_url: str, db: Database, tmp_path: Path
) -> None:
    bus = await EventBus.connect(infra.nats_url, name="test-runner")
    kind = f"test-stalls-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "attempts"
    try:
        job_id = await new_job(db, bus, kind)
        worker = await start_worker(infra, database_url, "hangs", kind, marker, max_deliver=2, seconds=60)
        await until(lambda: _state_is(db, job_id, RUNNING), 30, "the job to run")
        worker.kill()  # and no worker comes back for it
        await worker.wait()
        sweeper = JobSweeper([_runner(db, bus, kind, max_deliver=2)], every=0.5)
        stop = asyncio.Event()
        sweeping = asyncio.create_task(sweeper.run(stop))
        await until(lambda: _ended(db, job_id), 20, "the sweeper to end the job")
        stop.set()
        await asyncio.wait_for(sweeping, timeout=5)
    finally:
        await bus.close()
    row = await job_of(db, job_id)
    assert row.state == FAILED
    assert row.error.startswith("the worker stopped responding while counting the rows (no sign of life for 3 s")


async def test_an_event_consumer_retries_a_failed_event_until_it_is_handled(infra: Stack) -> None:
    bus = await EventBus.connect(infra.nats_url, name="test-consumer")
    job = uuid.uuid4().hex[:8]
    seen: list[tuple[dict[str, Any], int]] = []
    stop = asyncio.Event()

    async def handler(payload: dict[str, Any], delivery: Delivery) -> None:
        seen.append((payload, delivery.number))
        if delivery.number < 3:
            raise ConnectionError("the blob store is away")
        stop.set()

    consumer: Consumer[dict[str, Any]] = Consumer(
        bus, stream=EVENTS_STREAM, subject=f"events.test-deleted-{job}.*", durable=f"test-{job}",
        handler=handler, decode=json_object, settings=ConsumerSettings(ack_wait=2, batch=8, first_retry=0.1),
    )
    try:
        await bus.publish_event(f"test-deleted-{job}", "a", b"not json")  # dropped; the next one still comes
        await bus.publish_event(f"test-deleted-{job}", "b", b'{"id": "x"}')
        await asyncio.wait_for(consumer.run(stop), timeout=30)
    finally:
        await bus.close()
    assert seen == [({"id": "x"}, 1), ({"id": "x"}, 2), ({"id": "x"}, 3)]


def _runner(db: Database, bus: EventBus, kind: str, max_deliver: int) -> Any:
    from services.common.runner import JobRunner

    return JobRunner(db.sessions, bus, runner_jobs.kind(kind, runner_jobs.behaviour("succeeds", Path(os.devnull))),
                     runner_jobs.settings(max_deliver))


async def _ended(db: Database, job_id: str) -> bool:
    return (await job_of(db, job_id)).state in (SUCCEEDED, FAILED)


async def _state_is(db: Database, job_id: str, state: str) -> bool:
    return (await job_of(db, job_id)).state == state
