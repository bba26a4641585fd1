"""The shared work-queue consumer on a real nats-server: a job whose worker fails or dies
on every attempt is given up on its last delivery (the service marks it FAILED), instead
of being dropped by JetStream with its row RUNNING forever."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from services.common.events import EventBus, crash_message, run_work_queue
from services.stack import Stack

REPO = Path(__file__).resolve().parents[2]


async def test_a_job_that_fails_every_time_is_given_up_with_its_last_error(infra: Stack) -> None:
    bus = await EventBus.connect(infra.nats_url, name="test-give-up")
    kind = f"test-fails-{uuid.uuid4().hex[:6]}"
    attempts: list[int] = []
    given_up: list[tuple[dict[str, Any], int, str | None]] = []
    stop = asyncio.Event()

    async def handler(payload: dict[str, Any], delivery: int) -> None:
        attempts.append(delivery)
        raise ValueError(f"column 'body' not found (attempt {delivery})")

    async def give_up(payload: dict[str, Any], count: int, last_error: str | None) -> None:
        given_up.append((payload, count, last_error))
        stop.set()

    try:
        consumer = asyncio.create_task(run_work_queue(bus, kind, handler, stop, give_up, ack_wait=5, max_deliver=4, first_retry=0.1))
        await bus.enqueue(kind, {"id": "job-1"})
        await asyncio.wait_for(stop.wait(), timeout=30)
        await asyncio.wait_for(consumer, timeout=10)
    finally:
        await bus.close()
    assert attempts == [1, 2, 3], "the last delivery is given up, not run"
    assert given_up == [({"id": "job-1"}, 3, "ValueError: column 'body' not found (attempt 3)")]
    assert "failed 3 times" in crash_message("importing this file", 3, given_up[0][2])


WORKER = """
import asyncio, os, sys
from pathlib import Path
from services.common.events import EventBus, run_work_queue

async def main(url, kind, marker):
    bus = await EventBus.connect(url, name="test-dying-worker")
    stop = asyncio.Event()

    async def handler(payload, delivery):
        Path(marker + ".attempts").open("a").write(f"{delivery}\\n")
        os._exit(17)  # the worker process dies in the middle of the job

    async def give_up(payload, count, last_error):
        Path(marker).write_text(f"{payload['id']} {count} {last_error}")
        stop.set()

    await run_work_queue(bus, kind, handler, stop, give_up, ack_wait=1, max_deliver=3)
    await bus.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_job_whose_worker_dies_every_time_is_given_up(infra: Stack, tmp_path: Path) -> None:
    kind = f"test-dies-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "given-up"
    bus = await EventBus.connect(infra.nats_url, name="test-enqueue")
    try:
        await bus.enqueue(kind, {"id": "job-2"})
    finally:
        await bus.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "build/gen/python")])}
    exits = []
    deadline = time.monotonic() + 60
    while not marker.exists():  # a supervisor that restarts the worker each time it dies
        assert time.monotonic() < deadline, f"never given up; worker exits: {exits}"
        worker = await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, infra.nats_url, kind, str(marker), env=env)
        exits.append(await asyncio.wait_for(worker.wait(), timeout=30))
    assert exits == [17, 17, 0]
    assert (tmp_path / "given-up.attempts").read_text().split() == ["1", "2"]
    assert marker.read_text() == "job-2 2 None"  # no error to quote: the process died each time
    assert "stopped 2 times" in crash_message("making this map", 2, None)
