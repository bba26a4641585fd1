"""A projection worker process killed mid-job (SIGKILL: no goodbye, no nak) leaves its
job on the work queue; once the queue's ack deadline passes, a new worker process
(`python -m services.projection worker`) takes it and completes it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
import pytest_asyncio

from embedviz.v1 import ingest_pb2, job_pb2, projection_pb2, projection_pb2_grpc
from services.common.app import close_deps, open_deps
from services.common.config import Settings
from services.projection.server import build
from services.stack import Stack
from tests.projection import standins
from tests.projection.standins import auth

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "services" / "projection" / "migrations"
PROJECT = "projects/crash"
DATASET = f"{PROJECT}/datasets/d"
EMBEDDING = f"{DATASET}/embeddings/e"
OWNER = standins.new_user()
ROWS = 1500


@dataclasses.dataclass
class Setup:
    stub: projection_pb2_grpc.ProjectionServiceStub
    env: dict[str, str]
    logs: Path


@pytest_asyncio.fixture(scope="module")
async def setup(infra: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 6, size=ROWS)
    vectors = (rng.normal(size=(6, 48))[truth] * 4 + rng.normal(size=(ROWS, 48))).astype(np.float32)
    world = standins.World(project=PROJECT, roles={OWNER: ingest_pb2.ROLE_OWNER})
    world.datasets[DATASET] = standins.Dataset(pa.table({"text": [f"topic{t} words" for t in truth]}))
    world.embeddings[EMBEDDING] = (DATASET, vectors, job_pb2.JOB_STATE_SUCCEEDED, ["text"])
    others, address = await standins.serve(world)
    jwks, jwks_url = await standins.serve_jwks()
    blobs = tmp_path_factory.mktemp("blobs")
    settings = dataclasses.replace(
        Settings.from_env(),
        database_url=infra.database_url,
        nats_url=infra.nats_url,
        blob_root=str(blobs),
        ingest_addr=address,
        auth_addr=address,
        embedding_addr=address,
        internal_secret="test-secret",
        workers=0,  # the API only: jobs go to the worker processes
    )
    deps = await open_deps("projection", settings, "projection", MIGRATIONS, keys=standins.keys)
    built = await build(deps)
    port = built.server.add_insecure_port("127.0.0.1:0")
    await built.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    env = {
        **os.environ,
        "EMBEDVIZ_DATABASE_URL": infra.database_url,
        "EMBEDVIZ_NATS_URL": infra.nats_url,
        "EMBEDVIZ_BLOB_ROOT": str(blobs),
        "EMBEDVIZ_INGEST_ADDR": address,
        "EMBEDVIZ_AUTH_ADDR": address,
        "EMBEDVIZ_EMBEDDING_ADDR": address,
        "EMBEDVIZ_JWKS_URL": jwks_url,
        "EMBEDVIZ_INTERNAL_SECRET": "test-secret",
        "EMBEDVIZ_WORKERS": "1",
        "EMBEDVIZ_PROJECTION_WARM_UP": "0",  # t-SNE only here
    }
    try:
        yield Setup(projection_pb2_grpc.ProjectionServiceStub(channel), env, tmp_path_factory.mktemp("logs"))
    finally:
        await channel.close()
        await built.server.stop(1)
        await close_deps(deps)
        await others.stop(1)
        await jwks.cleanup()


@pytest.fixture
def workers(setup: Setup) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def start_worker(setup: Setup, started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    log = open(setup.logs / f"worker-{len(started)}.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "services.projection", "worker"],
        cwd=ROOT,
        env=setup.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    started.append(process)
    return process


@pytest.mark.slow
async def test_a_job_whose_worker_was_killed_is_completed_by_a_new_worker(
    setup: Setup, workers: list[subprocess.Popen[bytes]]
) -> None:
    first = start_worker(setup, workers)
    created = await setup.stub.CreateProjection(
        projection_pb2.CreateProjectionRequest(
            parent=EMBEDDING,
            projection=projection_pb2.Projection(method=projection_pb2.PROJECTION_METHOD_TSNE, seed=2),
        ),
        metadata=auth(OWNER),
    )

    async def state() -> projection_pb2.Projection:
        return await setup.stub.GetProjection(
            projection_pb2.GetProjectionRequest(name=created.name), metadata=auth(OWNER)
        )

    seen: list[str] = []
    for _ in range(1200):  # until the first worker is making the map
        current = await state()
        if not seen or seen[-1] != current.job.stage:
            seen.append(current.job.stage)
        if current.job.stage in ("pre-reduction", "optimisation"):
            break
        assert current.job.state in (job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_RUNNING), seen
        await asyncio.sleep(0.1)
    assert current.job.stage in ("pre-reduction", "optimisation"), seen
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    await asyncio.sleep(1)
    current = await state()
    assert current.job.state == job_pb2.JOB_STATE_RUNNING  # nobody failed it: it waits for a worker

    start_worker(setup, workers)
    last = None
    async for update in setup.stub.WatchProjection(
        projection_pb2.WatchProjectionRequest(name=created.name), metadata=auth(OWNER), timeout=400
    ):
        last = update.projection
    assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
    assert last.point_count == ROWS
    count = 0
    async for chunk in setup.stub.StreamPoints(
        projection_pb2.StreamPointsRequest(name=created.name), metadata=auth(OWNER)
    ):
        count += chunk.count
    assert count == ROWS
