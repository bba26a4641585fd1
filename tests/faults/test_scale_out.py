"""Scale-out (issue 12 point 4), on PostgreSQL and nats-server of this module's own, which it
stops and starts again:

- a service started before PostgreSQL and NATS waits for them, saying so in its log, and
  serves once they are up; later, NATS and PostgreSQL restarted while it is idle, it
  reconnects by itself and the next job succeeds (ingest: an import);
- two projection worker processes on one queue share one larger and several small maps:
  each process's /metrics shows maps it made, and every map has every point once;
- two embedding worker processes share a job; one gets SIGTERM in the middle of its shard
  while the other is idle: the shard goes back to the queue, the other takes it over at
  the last checkpoint at once (not after the sweeper's wait), and every row's vector is
  there once, in its place.

The APIs of projection and embedding run in this process (no job workers of their own),
the workers as real processes (`python -m services.<name> worker`); auth, ingest and
embedding are stand-ins where a test does not need the real one (tests/projection/standins.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import nats
import numpy as np
import pyarrow as pa
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from embedviz.v1 import (
    embedding_pb2,
    embedding_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    job_pb2,
    projection_pb2,
    projection_pb2_grpc,
)
from services.common.app import Built, close_deps, open_deps
from services.common.config import Settings
from services.common.events import WORK_STREAM
from services.embedding.server import MIGRATIONS as EMBEDDING_MIGRATIONS
from services.embedding.server import build as build_embedding
from services.embedding.settings import EmbeddingSettings
from services.projection.server import build as build_projection
from services.stack import Stack
from services.stack.stack import free_ports
from tests.projection import standins
from tests.projection.standins import auth
from tests.support.texts import TOPICS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
PROJECTION_MIGRATIONS = REPO / "services" / "projection" / "migrations"
PROJECT = "projects/scale"
OWNER = standins.new_user()
ENDED = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
# How long a worker process may take to import its libraries and start pulling work on a
# machine whose two cores the other test processes keep busy (a quiet one: seconds).
WORKER_START_S = 240

# Embedding: 600 rows in two shards, [0, 450) and [450, 600), checkpointed every 50 rows.
# Row i's text is the (i mod 47)-th of 47 different sentences, so every row's vector can be
# checked against the rows with the same text without a model in this process.
TEXT_ROWS, SHARD_ROWS, CHECKPOINT_ROWS, DISTINCT = 600, 450, 50, 47
EMBED_ACK_WAIT_S = 10  # a shard's lease is half of it: 5 s
TEXTS = f"{PROJECT}/datasets/texts"

# Projection: one larger map and several small ones, PCA (the fit does not matter here).
LARGE_ROWS, SMALL_ROWS, SMALL_MAPS = 4000, 300, 5
LARGE = f"{PROJECT}/datasets/large/embeddings/e"
SMALL = f"{PROJECT}/datasets/small/embeddings/e"


def sentences() -> list[str]:
    """DISTINCT different sentences, spread over the test topics' subjects, verbs and objects."""
    every = [f"{s} {v} {o}." for subjects, verbs, objects in TOPICS.values()
             for s, v, o in itertools.product(subjects, verbs, objects)]
    return every[:: len(every) // DISTINCT][:DISTINCT]


def clustered(rows: int, dimension: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 6, size=rows)
    return (rng.normal(size=(6, dimension))[truth] * 4 + rng.normal(size=(rows, dimension))).astype(np.float32)


# --- the parts --------------------------------------------------------------------------------


@dataclasses.dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    metrics_addr: str

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as reply:
            return str(reply.read().decode())


@dataclasses.dataclass
class Parts:
    stack: Stack
    logs: Path
    standins: str  # address of the stand-in auth, ingest and embedding
    jwks_url: str
    processes: list[Process] = dataclasses.field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """What a service or worker process gets: this module's PostgreSQL and NATS (its admin
        user, which may make the streams), the stand-ins, and `extra`."""
        return {
            **os.environ,
            **self.stack.env,
            "EMBEDVIZ_AUTH_ADDR": self.standins,
            "EMBEDVIZ_INGEST_ADDR": self.standins,
            "EMBEDVIZ_EMBEDDING_ADDR": self.standins,
            "EMBEDVIZ_JWKS_URL": self.jwks_url,
            "EMBEDVIZ_WORKERS": "1",
            "EMBEDVIZ_JOB_ACK_WAIT": "10",
            "EMBEDVIZ_PROJECTION_WARM_UP": "0",  # PCA only: no numba warm-up
            "HF_HUB_OFFLINE": "1",
            **extra,
        }

    def start(self, name: str, module: str, *args: str, **extra: str) -> Process:
        (metrics_port,) = free_ports(1)
        metrics_addr = f"127.0.0.1:{metrics_port}"
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env=self.env(EMBEDVIZ_METRICS_ADDR=metrics_addr, **extra),
            )
        process = Process(name, popen, log, metrics_addr)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        if process.popen.poll() is None:
            process.popen.terminate()
            try:
                process.popen.wait(20)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()

    def settings(self, workers: int = 0) -> Settings:
        """Settings for a service's API in this process: no job workers of its own."""
        env = self.stack.env
        return dataclasses.replace(
            Settings.from_env(),
            data_dir=Path(env["EMBEDVIZ_DATA_DIR"]),
            database_url=env["EMBEDVIZ_DATABASE_URL"],
            nats_url=env["EMBEDVIZ_NATS_URL"],
            blob_root=env["EMBEDVIZ_BLOB_ROOT"],
            ingest_addr=self.standins,
            auth_addr=self.standins,
            embedding_addr=self.standins,
            internal_secret=env["EMBEDVIZ_INTERNAL_SECRET"],
            metrics_addr="",
            workers=workers,
        )


@pytest.fixture(scope="module")
def servers() -> Iterator[Stack]:
    """PostgreSQL and nats-server of this module alone: its tests stop and start them."""
    root = Path(tempfile.mkdtemp(prefix="embedviz-scale-out-"))
    root.chmod(0o755)  # as root, PostgreSQL runs as nobody and must reach its folder
    environ = {k: v for k, v in os.environ.items() if k not in ("EMBEDVIZ_DATABASE_URL", "EMBEDVIZ_NATS_URL")}
    stack = Stack(root / "stack", components="postgres,nats", ports="free", environ=environ)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if stack.logs_dir.exists():
            target = ARTIFACTS / "logs" / "scale-out"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(stack.logs_dir, target)
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="module")
async def parts(servers: Stack) -> AsyncIterator[Parts]:
    texts = sentences()
    world = standins.World(project=PROJECT, roles={OWNER: ingest_pb2.ROLE_OWNER})
    world.datasets[TEXTS] = standins.Dataset(pa.table({"text": [texts[i % DISTINCT] for i in range(TEXT_ROWS)]}))
    for embedding, rows, seed in ((LARGE, LARGE_ROWS, 1), (SMALL, SMALL_ROWS, 2)):
        dataset = embedding.rsplit("/embeddings/", 1)[0]
        world.datasets[dataset] = standins.Dataset(pa.table({"text": [f"row {i}" for i in range(rows)]}))
        world.embeddings[embedding] = (dataset, clustered(rows, 48, seed), job_pb2.JOB_STATE_SUCCEEDED, ["text"])
    others, address = await standins.serve(world)
    jwks, jwks_url = await standins.serve_jwks()
    logs = servers.logs_dir  # copied to test-artifacts with the servers' own
    made = Parts(servers, logs, address, jwks_url)
    try:
        yield made
    finally:
        for process in made.processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in made.processes:
            try:
                process.popen.wait(20)
            except subprocess.TimeoutExpired:
                process.popen.kill()
        await others.stop(1)
        await jwks.cleanup()


# --- helpers ----------------------------------------------------------------------------------


async def health(address: str) -> str:
    """SERVING, NOT_SERVING, or why no answer came (the port not open yet)."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def until(what: str, check: Any, within: float, every: float = 0.2) -> float:
    """Wait until `check()` (sync or async) is true; seconds it took."""
    started = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"{what}: not after {within:.0f} s"
        await asyncio.sleep(every)


async def pulling(stack: Stack, durable: str, workers: list[Process], within: float = WORKER_START_S) -> None:
    """Wait until `workers` all wait for work on the queue: as many pull requests as
    processes are open on the durable consumer (JetStream's own count)."""
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()

        async def enough() -> bool:
            for process in workers:
                assert process.popen.poll() is None, f"{process.name} exited:\n{process.text()[-3000:]}"
            try:
                info = await js.consumer_info(WORK_STREAM, durable, timeout=2)
            except Exception:  # noqa: BLE001 - not made yet: no worker has subscribed
                return False
            return (info.num_waiting or 0) >= len(workers)

        await until(f"{len(workers)} workers pulling from {durable}", enough, within, every=0.3)
    finally:
        await nc.close()


def job_runs(process: Process, kind: str) -> dict[str, float]:
    """embedviz_job_runs_total of `kind` on the process's /metrics, by outcome."""
    runs: dict[str, float] = {}
    for family in text_string_to_metric_families(process.metrics()):
        for sample in family.samples:
            if sample.name == "embedviz_job_runs_total" and sample.labels.get("kind") == kind:
                runs[sample.labels["outcome"]] = runs.get(sample.labels["outcome"], 0.0) + sample.value
    return runs


async def serve_api(built: Built) -> tuple[str, grpc.aio.Channel]:
    port = built.server.add_insecure_port("127.0.0.1:0")
    await built.server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return f"127.0.0.1:{port}", channel


# --- a service that starts first, and restarts under it ---------------------------------------


async def upload(stub: ingest_pb2_grpc.IngestServiceStub, project: str, rows: int) -> str:
    data = ("n,text\n" + "".join(f"{i},note number {i}\n" for i in range(rows))).encode()
    md = auth(OWNER)
    made = await stub.CreateUpload(
        ingest_pb2.CreateUploadRequest(parent=project, upload=ingest_pb2.Upload(filename="notes.csv",
                                                                                size_bytes=len(data))),
        metadata=md, timeout=10,
    )
    await stub.AppendUploadChunk(ingest_pb2.AppendUploadChunkRequest(name=made.name, offset=0, data=data),
                                 metadata=md, timeout=10)
    dataset = await stub.FinishUpload(ingest_pb2.FinishUploadRequest(name=made.name), metadata=md, timeout=10)
    return str(dataset.name)


async def imported(stub: ingest_pb2_grpc.IngestServiceStub, name: str, within: float = 120) -> ingest_pb2.Dataset:
    deadline = time.monotonic() + within
    while True:
        dataset = await stub.GetDataset(ingest_pb2.GetDatasetRequest(name=name), metadata=auth(OWNER), timeout=10)
        if dataset.job.state in ENDED:
            return dataset
        assert time.monotonic() < deadline, f"the import has not ended after {within:.0f} s: {dataset.job}"
        await asyncio.sleep(0.3)


@pytest.mark.timeout(600)
async def test_a_service_started_before_postgres_and_nats_serves_once_they_come_up_and_rides_out_restarts(
    parts: Parts,
) -> None:
    stack = parts.stack
    stack.kill("postgres")
    stack.kill("nats")
    address = stack.addrs["ingest"]
    ingest = parts.start("ingest", "services.ingest", EMBEDVIZ_INGEST_ADDR=address, EMBEDVIZ_START_WAIT="300")
    try:
        # PostgreSQL and NATS are away: the process waits, says what for, and does not serve
        waiting = "cannot be reached yet"
        await until("ingest saying it waits for PostgreSQL", lambda: f"PostgreSQL at {stack.addrs['postgres']}"
                    in ingest.text() and waiting in ingest.text(), WORKER_START_S)
        for _ in range(10):
            assert ingest.popen.poll() is None, ingest.text()[-3000:]
            assert await health(address) in ("UNAVAILABLE", "NOT_SERVING", "DEADLINE_EXCEEDED")
            await asyncio.sleep(0.3)

        stack.restart("postgres")
        # then NATS, once the service has got past PostgreSQL to waiting for it
        await until("ingest saying it waits for NATS", lambda: f"NATS at {stack.addrs['nats']} {waiting}"
                    in ingest.text(), 120)
        assert await health(address) != "SERVING"
        nats_started = time.monotonic()
        stack.restart("nats")
        nats_ready = time.monotonic() - nats_started
        await until("ingest SERVING", lambda: _is_serving(address), 120)
        print(f"\ningest started before PostgreSQL and NATS: SERVING {time.monotonic() - nats_started:.1f} s "
              f"after nats-server was started again ({nats_ready:.1f} s until JetStream answered)")
        assert ingest.popen.poll() is None
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            project = await stub.CreateProject(
                ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name="early")),
                metadata=auth(OWNER), timeout=10,
            )
            listed = await stub.ListProjects(ingest_pb2.ListProjectsRequest(), metadata=auth(OWNER), timeout=10)
            assert [p.name for p in listed.projects] == [project.name]

            # Idle, it sees NATS and then PostgreSQL restart (killed, as a crash would); then
            # the next job, an import, goes through the queue and the database as before.
            for part in ("nats", "postgres"):
                stack.kill(part)
                await asyncio.sleep(3)
                stack.restart(part)
            began = time.monotonic()
            dataset = None
            while dataset is None:  # the first call may meet a pooled connection PostgreSQL dropped
                try:
                    dataset = await upload(stub, project.name, 50)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - began < 60, exc
                    await asyncio.sleep(1)
            done = await imported(stub, dataset)
            print(f"after NATS and PostgreSQL restarted: an import SUCCEEDED {time.monotonic() - began:.1f} s later")
            assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
            assert done.row_count == 50
            rows = await stub.ListRows(
                ingest_pb2.ListRowsRequest(parent=dataset, page_size=100), metadata=auth(OWNER), timeout=10
            )
            assert [r.values[1].string_value for r in rows.rows] == [f"note number {i}" for i in range(50)]
        assert ingest.popen.poll() is None, "ingest exited"
    finally:
        parts.stop(ingest)


async def _is_serving(address: str) -> bool:
    return await health(address) == "SERVING"


# --- two projection workers -------------------------------------------------------------------


async def points_once(stub: projection_pb2_grpc.ProjectionServiceStub, name: str, rows: int) -> None:
    indexes = []
    async for chunk in stub.StreamPoints(projection_pb2.StreamPointsRequest(name=name), metadata=auth(OWNER),
                                         timeout=60):
        indexes.append(np.frombuffer(chunk.row_indexes, dtype="<u4"))
    assert sorted(np.concatenate(indexes).tolist()) == list(range(rows))


@pytest.mark.timeout(600)
async def test_two_projection_workers_share_one_larger_and_several_small_maps(parts: Parts) -> None:
    deps = await open_deps("projection", parts.settings(), "projection", PROJECTION_MIGRATIONS, keys=standins.keys)
    built = await build_projection(deps)
    _, channel = await serve_api(built)
    workers = [parts.start(f"projection-worker-{k}", "services.projection", "worker") for k in range(2)]
    try:
        stub = projection_pb2_grpc.ProjectionServiceStub(channel)
        await pulling(parts.stack, "projection-workers", workers)

        async def create(embedding: str, seed: int) -> str:
            made = await stub.CreateProjection(
                projection_pb2.CreateProjectionRequest(
                    parent=embedding,
                    projection=projection_pb2.Projection(
                        method=projection_pb2.PROJECTION_METHOD_PCA, dimensions=2, seed=seed,
                        clustering=projection_pb2.ClusterParams(
                            algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS, k=6,
                            space=projection_pb2.CLUSTER_SPACE_PROJECTED,
                        ),
                    ),
                ),
                metadata=auth(OWNER),
            )
            return str(made.name)

        began = time.monotonic()
        maps = [(await create(LARGE, 1), LARGE_ROWS)]
        small = await asyncio.gather(*(create(SMALL, seed) for seed in range(2, 2 + SMALL_MAPS)))
        maps += [(name, SMALL_ROWS) for name in small]
        for name, rows in maps:
            done = None
            async for update in stub.WatchProjection(
                projection_pb2.WatchProjectionRequest(name=name), metadata=auth(OWNER), timeout=300
            ):
                done = update.projection
            assert done is not None and done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done
            assert done.point_count == rows
            await points_once(stub, name, rows)
        took = time.monotonic() - began

        # Each process's own /metrics: the maps it made; together, each map once.
        async def counted() -> bool:
            runs = [await asyncio.to_thread(job_runs, w, "projection") for w in workers]
            return sum(r.get("succeeded", 0) for r in runs) >= len(maps)

        await until("the workers' metrics counting every map", counted, 15)
        made = [(await asyncio.to_thread(job_runs, w, "projection")).get("succeeded", 0) for w in workers]
        print(f"\n{len(maps)} maps ({LARGE_ROWS} and {SMALL_MAPS} x {SMALL_ROWS} rows) in {took:.1f} s; "
              f"made per worker process: {made}")
        assert sum(made) == len(maps), made
        assert all(count >= 1 for count in made), f"a worker made no map: {made}"
    finally:
        for worker in workers:
            parts.stop(worker)
        await channel.close()
        await built.server.stop(1)
        await close_deps(deps)


# --- SIGTERM to an embedding worker -----------------------------------------------------------


async def shard_rows(stack: Stack, embedding: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(stack.pg_dsn)
    try:
        return await connection.fetch(
            'SELECT "index", start_row, end_row, done_row, state, worker, workers, parts FROM embedding.shards '
            "WHERE embedding_id = $1 ORDER BY start_row",
            embedding.rsplit("/", 1)[1],
        )
    finally:
        await connection.close()


def pid_of(worker_name: str) -> int:
    return int(worker_name.split("/")[1])  # host/pid/slot


@pytest.mark.timeout(600)
async def test_sigterm_to_an_embedding_worker_hands_its_shard_to_the_other_at_once(parts: Parts) -> None:
    deps = await open_deps("embedding", parts.settings(), "embedding", EMBEDDING_MIGRATIONS, keys=standins.keys)
    built = await build_embedding(deps, own=EmbeddingSettings.from_env({}))
    _, channel = await serve_api(built)
    worker_env = {
        "EMBEDVIZ_EMBED_SHARD_ROWS": str(SHARD_ROWS),
        "EMBEDVIZ_EMBED_CHECKPOINT_ROWS": str(CHECKPOINT_ROWS),
        "EMBEDVIZ_EMBED_ACK_WAIT": str(EMBED_ACK_WAIT_S),
        "EMBEDVIZ_EMBED_HEARTBEAT": "0.3",
        "EMBEDVIZ_EMBED_DEVICE": "cpu",
        "EMBEDVIZ_EMBED_PRECISION": "float32",  # the same numbers however the rows are batched
        "EMBEDVIZ_TORCH_THREADS": "1",
    }
    workers = [parts.start(f"embedding-worker-{k}", "services.embedding", "worker", **worker_env) for k in range(2)]
    try:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        internal = embedding_pb2_grpc.EmbeddingInternalServiceStub(channel)
        await pulling(parts.stack, "embedding-workers", workers)
        created = await stub.CreateEmbedding(
            embedding_pb2.CreateEmbeddingRequest(
                parent=TEXTS, embedding=embedding_pb2.Embedding(text_columns=["text"])
            ),
            metadata=auth(OWNER),
        )
        by_pid = {w.popen.pid: w for w in workers}

        # The moment: the small shard is done (its worker is idle again), the large one is
        # at least a window in and at least a window short of its end.
        async def mid_way() -> bool:
            shards = await shard_rows(parts.stack, created.name)
            if len(shards) != 2:
                return False
            large, small = shards
            assert large["state"] != "DONE", f"the large shard ended before the SIGTERM: {dict(large)}"
            window = (large["start_row"] + CHECKPOINT_ROWS, large["end_row"] - 2 * CHECKPOINT_ROWS)
            return bool(small["state"] == "DONE" and large["worker"] and window[0] <= large["done_row"] <= window[1])

        await until("the small shard done and the large one half-way", mid_way, 300, every=0.05)
        large, small = await shard_rows(parts.stack, created.name)
        stopping = by_pid[pid_of(large["worker"])]
        other = next(w for w in workers if w is not stopping)
        assert pid_of(json.loads(small["workers"])[0]) == other.popen.pid, "one worker took both shards"
        at_row = large["done_row"]
        stopping.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(stopping.popen.wait, 30)
        print(f"\nSIGTERM at row {at_row} of [{large['start_row']}, {large['end_row']}): the worker exited with "
              f"{code} after {time.monotonic() - signalled:.1f} s")
        assert code == 0, stopping.text()[-3000:]
        assert "embedding worker stopping" in stopping.text()

        done = None
        async for update in stub.WatchEmbedding(
            embedding_pb2.WatchEmbeddingRequest(name=created.name), metadata=auth(OWNER), timeout=300
        ):
            done = update.embedding
        took = time.monotonic() - signalled
        assert done is not None and done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done
        assert (done.row_count, done.job.done, done.job.total) == (TEXT_ROWS, TEXT_ROWS, TEXT_ROWS)
        print(f"the other worker finished the job {took:.1f} s after the SIGTERM")

        # The shard went back to the queue and the other worker took it over from the last
        # checkpoint itself, not from the sweeper after the job looked stalled.
        large, small = await shard_rows(parts.stack, created.name)
        assert [pid_of(w) for w in json.loads(large["workers"])] == [stopping.popen.pid, other.popen.pid]
        resumed = re.search(r"shard 0: resuming at row (\d+)", other.text())
        assert resumed and int(resumed.group(1)) >= at_row, other.text()[-3000:]
        assert "taking over from" in other.text()
        for process in workers:
            assert "queued again" not in process.text(), "the shard waited for the sweeper instead"
        for shard in (large, small):
            pieces = json.loads(shard["parts"])
            assert pieces[0][0] == shard["start_row"] and pieces[-1][1] == shard["end_row"]
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False)), pieces  # no gap, no overlap

        # Every row's vector once, in its place: the same as the rows with the same text,
        # and nearest to that text's first row of all the texts' first rows.
        chunks = [
            c async for c in internal.StreamVectors(
                embedding_pb2.StreamVectorsRequest(embedding=created.name, chunk_rows=200), metadata=auth(OWNER)
            )
        ]
        vectors = np.frombuffer(b"".join(c.vectors for c in chunks), dtype="<f4").reshape(-1, chunks[0].dimension)
        assert vectors.shape == (TEXT_ROWS, 384)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        similarity = unit @ unit[:DISTINCT].T
        expected = np.arange(TEXT_ROWS) % DISTINCT
        assert (similarity.argmax(axis=1) == expected).all(), np.nonzero(similarity.argmax(axis=1) != expected)
        own = similarity[np.arange(TEXT_ROWS), expected]
        assert own.min() > 0.9999, f"row {int(own.argmin())}: cosine {own.min():.6f} to its text's first row"
    finally:
        for worker in workers:
            parts.stop(worker)
        await channel.close()
        await built.server.stop(1)
        await close_deps(deps)
