"""Fault tests of the shared parts: nats-server or PostgreSQL gone for 30 s in the middle of
an embedding job. The job must not fail: it waits for them and ends SUCCEEDED with every
row's vector, and a Watch opened afterwards shows the truth.

Each runs on a stack of its own (the shared one must not lose its servers)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from embedviz.v1 import embedding_pb2, ingest_pb2, job_pb2
from services.stack import Stack
from tests.support.world import Stubs

pytestmark = pytest.mark.slow

ROWS = 3000
OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def faulty_stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="embedviz-faults-"))
    root.chmod(0o755)
    stack = Stack(root / "stack", components="postgres,nats,auth,ingest,embedding", ports="free")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
async def stubs(faulty_stack: Stack) -> AsyncIterator[Stubs]:
    s = Stubs(faulty_stack)
    yield s
    await s.close()


async def _embedding_state(stubs: Stubs, md: tuple[tuple[str, str], ...], name: str) -> embedding_pb2.Embedding:
    return await stubs.embedding.GetEmbedding(embedding_pb2.GetEmbeddingRequest(name=name), metadata=md, timeout=10)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("part", ["nats", "postgres"])
async def test_an_embedding_survives_a_30_s_outage(faulty_stack: Stack, stubs: Stubs, part: str) -> None:
    who = await stubs.sign_up(f"outage-{part}")
    project = await stubs.make_project(who)
    dataset = await stubs.make_dataset(who, project, n_rows=ROWS)
    name = await stubs.make_embedding(who, dataset, wait=False)
    started = time.monotonic()
    while (await _embedding_state(stubs, who.md, name)).job.done < ROWS // 10:
        assert time.monotonic() - started < 120, "the embedding never got going"
        await asyncio.sleep(0.2)
    faulty_stack.kill(part)
    killed_at = time.monotonic()

    async def watch_through_it() -> embedding_pb2.Embedding | None:
        last = None
        async for update in stubs.embedding.WatchEmbedding(
            embedding_pb2.WatchEmbeddingRequest(name=name), metadata=who.md, timeout=400
        ):
            last = update.embedding
        return last

    # opened while NATS is away: it follows the job's record instead and still ends
    watcher = asyncio.create_task(watch_through_it()) if part == "nats" else None
    await asyncio.sleep(OUTAGE_S)
    faulty_stack.restart(part)
    print(f"{part} was down {time.monotonic() - killed_at:.1f} s")
    deadline = time.monotonic() + 300
    while True:
        try:
            embedding = await _embedding_state(stubs, who.md, name)
        except Exception as exc:  # the service itself may still be reconnecting
            print(f"GetEmbedding: {exc}")
            embedding = None
        if embedding is not None and embedding.job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED):
            break
        assert time.monotonic() < deadline, f"still {embedding.job if embedding else None}"
        await asyncio.sleep(1)
    assert embedding.job.state == job_pb2.JOB_STATE_SUCCEEDED, embedding.job.error
    assert embedding.row_count == ROWS
    if watcher is not None:
        watched = await asyncio.wait_for(watcher, timeout=60)
        assert watched is not None and watched.job.state == job_pb2.JOB_STATE_SUCCEEDED
    last = None
    async for update in stubs.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=name), metadata=who.md, timeout=60
    ):
        last = update.embedding
    assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED


@pytest.mark.timeout(600)
async def test_with_auth_down_issued_tokens_work_and_new_jobs_wait(faulty_stack: Stack, stubs: Stubs) -> None:
    """Auth gone for 30 s: tokens it already issued keep working at every service (keys
    cached), a running embedding goes on, and one created meanwhile waits and then runs."""
    who = await stubs.sign_up("auth-down")
    project = await stubs.make_project(who)
    dataset = await stubs.make_dataset(who, project, n_rows=ROWS // 2)
    running = await stubs.make_embedding(who, dataset, wait=False)
    faulty_stack.kill("auth")
    killed_at = time.monotonic()
    try:
        # the person's token still works at the services while auth is gone
        projects = await stubs.ingest.ListProjects(ingest_pb2.ListProjectsRequest(), metadata=who.md, timeout=10)
        assert [p.name for p in projects.projects] == [project]
        created_meanwhile = await stubs.make_embedding(who, dataset, wait=False)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed_at)))
        meanwhile = await _embedding_state(stubs, who.md, created_meanwhile)
        assert meanwhile.job.state != job_pb2.JOB_STATE_FAILED, meanwhile.job.error
    finally:
        faulty_stack.restart("auth")
    for name in (running, created_meanwhile):
        deadline = time.monotonic() + 300
        while (embedding := await _embedding_state(stubs, who.md, name)).job.state not in (
            job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED
        ):
            assert time.monotonic() < deadline, embedding.job
            await asyncio.sleep(1)
        assert embedding.job.state == job_pb2.JOB_STATE_SUCCEEDED, embedding.job.error
        assert embedding.row_count == ROWS // 2
