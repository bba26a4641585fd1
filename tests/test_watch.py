"""Watch streams: a client that goes away mid-job ends its stream quietly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from embedviz.v1 import embedding_pb2
from services.stack import Stack
from tests.support.world import Stubs


@pytest.fixture(scope="module")
async def stubs(stack: Stack) -> AsyncIterator[Stubs]:
    s = Stubs(stack)
    yield s
    await s.close()


async def test_a_watch_cancelled_mid_job_leaves_no_error_in_the_service_log(stack: Stack, stubs: Stubs) -> None:
    """A browser that closes a running job's Watch: the stream ends quietly (it used to log
    'Task exception was never retrieved … ContextVar … created in a different Context')."""
    person = await stubs.sign_up("watch-cancel")
    project = await stubs.make_project(person)
    dataset = await stubs.make_dataset(person, project, n_rows=600)
    log = stack.logs_dir / "embedding.log"
    before = log.stat().st_size
    embedding = await stubs.make_embedding(person, dataset, wait=False)
    for _ in range(3):
        call = stubs.embedding.WatchEmbedding(embedding_pb2.WatchEmbeddingRequest(name=embedding), metadata=person.md)
        await call.read()
        call.cancel()
        await asyncio.sleep(0.3)
    await stubs.make_embedding(person, dataset, wait=True)  # the service is still well
    await asyncio.sleep(1)
    with log.open("rb") as f:
        f.seek(before)
        written = f.read().decode(errors="replace")
    assert "different Context" not in written and "Task exception was never retrieved" not in written, written[-3000:]
