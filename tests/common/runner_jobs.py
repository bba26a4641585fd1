"""A kind of job for the runner's tests: a table of its own (JobColumns, like datasets,
embeddings and projections) in a database of its own, and a worker process that the tests
start, kill and restart. Run as `python -m tests.common.runner_jobs URL DB BEHAVIOUR KIND`."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.db import Database
from services.common.errors import InvalidArgument, Unavailable
from services.common.events import EventBus
from services.common.jobs import JobColumns, JobReporter
from services.common.runner import Job, JobKind, JobRunner, RunnerSettings

SCHEMA = "runner_test"


class Base(DeclarativeBase):
    pass


class CountingJob(JobColumns, Base):
    __tablename__ = "jobs"
    __table_args__ = {"schema": SCHEMA}
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(40), default="someone")


async def new_database(pg_dsn: str, database_url: str) -> str:
    name = f"runner_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(pg_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    db = Database(url)
    try:
        async with db.engine.begin() as connection:
            await connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
            await connection.run_sync(Base.metadata.create_all)
    finally:
        await db.close()
    return url


async def no_publish(row: CountingJob) -> None:
    return None


def settings(max_deliver: int = 3) -> RunnerSettings:
    return RunnerSettings(ack_wait=1.5, max_deliver=max_deliver, first_retry=0.1, stale_after=3.0,
                          sweep_every=0.5, cancel_grace=1.0)


def kind(name: str, run: Any, clean_up: Any = None) -> JobKind[CountingJob]:
    return JobKind(kind=name, model=CountingJob, publish=no_publish, run=run, what="counting the rows",
                   clean_up=clean_up)


def behaviour(name: str, marker: Path) -> Any:
    """The job's work in the worker process: note each attempt, then do as `name` says."""

    async def run(job: Job, reporter: JobReporter[CountingJob]) -> None:
        with marker.open("a") as notes:
            notes.write(f"{job.attempt}\n")
        await reporter.start("counting", total=10)
        if name == "dies":
            os._exit(17)  # the worker process dies in the middle of the job
        if name == "hangs":
            await asyncio.sleep(3600)  # the test kills the process meanwhile
        if name == "unavailable":
            raise Unavailable("the dataset service is away")
        if name == "invalid":
            raise InvalidArgument("column 'body' not found; the dataset has: title, text")
        await reporter.succeed(done=10, total=10)

    return run


async def worker(nats_url: str, database_url: str, name: str, kind_name: str, max_deliver: str) -> None:
    bus = await EventBus.connect(nats_url, name="test-runner-worker")
    db = Database(database_url)
    marker = Path(os.environ["RUNNER_TEST_MARKER"])
    runner = JobRunner(db.sessions, bus, kind(kind_name, behaviour(name, marker)), settings(int(max_deliver)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(float(os.environ.get("RUNNER_TEST_SECONDS", "8")), stop.set)
    try:
        await runner.run(stop)
    finally:
        await bus.close()
        await db.close()


if __name__ == "__main__":
    asyncio.run(worker(*sys.argv[1:]))
