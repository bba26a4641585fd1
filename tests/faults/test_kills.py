"""Fault tests on the whole path (upload → import → embed → map → points) with 2,000 real
rows (Debian package summaries): one part at a time is SIGKILLed while its stage runs and
then started again — ingest during an import; embedding, auth, nats-server and PostgreSQL
during an embedding; projection and its fitting child process during a UMAP map.

Each job must end SUCCEEDED with every row exactly once and vectors equal to those of one
uninterrupted reference run (cosine > 0.9999 per row), or, where that is the right
answer, FAILED with a message a person understands; no job is left RUNNING. A Watch held
through the kill of the service that serves it ends UNAVAILABLE, and a new Watch shows
the true state.

The stack is this module's own (everything but the web client and the edge), with short
ack waits so a job whose worker was killed is handed out again within seconds. The
reference run (import, embedding, a PCA map) is made once; the embedding kills embed its
dataset again, the map kills map its embedding. Each case prints its result and time, and
the list is written to test-artifacts/faults-kills.txt."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import numpy as np
import pyarrow as pa
import pytest

from embedviz.v1 import auth_pb2, embedding_pb2, ingest_pb2, job_pb2, projection_pb2
from services.stack import Stack
from tests.projection import debian
from tests.support.world import PASSWORD, Person, Stubs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not debian.packages(), reason="needs apt's package lists (apt-get update) for real text"),
]

ROWS = 1200
ACK_WAIT_S = 15  # a killed worker's job is handed out again after this
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
ENDED = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
FIT_STAGES = ("neighbours", "optimisation")
MIN_COSINE = 0.9999
# What a job may take here on a busy machine (2 cores shared with other suites): the
# reference embedding has taken 5 minutes there, about 20 s when the machine is quiet.
SLOW_S = 900
RESULTS: list[str] = []

T = TypeVar("T")


@pytest.fixture(scope="module")
def kill_stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="embedviz-kills-"))
    root.chmod(0o755)  # as root, PostgreSQL runs as nobody and must reach its folder
    environ = {k: v for k, v in os.environ.items() if k not in ("EMBEDVIZ_DATABASE_URL", "EMBEDVIZ_NATS_URL")}
    environ.update(
        {
            "EMBEDVIZ_WORKERS": "1",
            "EMBEDVIZ_JOB_ACK_WAIT": str(ACK_WAIT_S),
            "EMBEDVIZ_EMBED_ACK_WAIT": str(ACK_WAIT_S),
            # two shards with checkpoints every 150 rows: a killed embedding resumes mid-way
            "EMBEDVIZ_EMBED_SHARD_ROWS": "600",
            "EMBEDVIZ_EMBED_CHECKPOINT_ROWS": "150",
            "EMBEDVIZ_EMBED_DEVICE": "cpu",
            "EMBEDVIZ_EMBED_PRECISION": "float32",  # the same numbers however the rows are batched
        }
    )
    parts = "postgres,nats,auth,ingest,embedding,projection"
    stack = Stack(root / "stack", components=parts, ports="free", environ=environ)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if stack.logs_dir.exists():
            target = ARTIFACTS / "logs" / "kills"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(stack.logs_dir, target)
        shutil.rmtree(root, ignore_errors=True)
        if RESULTS:
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "faults-kills.txt").write_text("\n".join(RESULTS) + "\n")
            print("\nkill tests:\n  " + "\n  ".join(RESULTS))


def real_rows(count: int) -> list[dict[str, str]]:
    """Debian packages spread over the whole list (every section), with both descriptions."""
    packages = debian.packages()
    chosen = packages[:: max(1, len(packages) // count)][:count]
    assert len(chosen) == count, f"apt knows only {len(packages)} packages"
    return [{"name": p.name, "section": p.section, "summary": p.summary, "description": p.description} for p in chosen]


def csv_of(table: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue().encode()


@dataclass
class World:
    stack: Stack
    stubs: Stubs
    owner: Person
    project: str
    table: list[dict[str, str]]
    data: bytes
    dataset: str = ""
    embedding: str = ""
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    old_stubs: list[Stubs] = field(default_factory=list)

    async def login(self) -> None:
        """A new access token for the owner: one lives 15 minutes, and this module runs longer."""
        response = await self.stubs.auth.Login(auth_pb2.LoginRequest(email=self.owner.email, password=PASSWORD))
        self.owner.token = response.session.access_token

    def reconnect(self) -> None:
        """Fresh channels after a restart (a channel that saw its server go backs off for a while)."""
        self.old_stubs.append(self.stubs)
        self.stubs = Stubs(self.stack)


@pytest.fixture(scope="module")
async def world(kill_stack: Stack) -> AsyncIterator[World]:
    stubs = Stubs(kill_stack)
    table = real_rows(ROWS)
    owner = await stubs.sign_up("kills")
    w = World(kill_stack, stubs, owner, await stubs.make_project(owner, "kills"), table, csv_of(table))
    try:
        started = time.monotonic()
        w.dataset = await upload(w)
        imported = await settle(lambda: get_dataset(w, w.dataset), 120)
        assert imported.job.state == job_pb2.JOB_STATE_SUCCEEDED, imported.job.error
        await assert_rows_are_the_table(w, w.dataset)
        t_import = time.monotonic() - started
        w.embedding = await create_embedding(w)
        embedded = await settle(lambda: get_embedding(w, w.embedding), SLOW_S)
        assert embedded.job.state == job_pb2.JOB_STATE_SUCCEEDED, embedded.job.error
        w.vectors = await read_vectors(w, w.embedding)
        assert w.vectors.shape == (ROWS, 384)
        t_embed = time.monotonic() - started - t_import
        name = await create_map(w, pca=True)
        mapped = await settle(lambda: get_projection(w, name), SLOW_S)
        assert mapped.job.state == job_pb2.JOB_STATE_SUCCEEDED, mapped.job.error
        await assert_points_once(w, name)
        t_map = time.monotonic() - started - t_import - t_embed
        RESULTS.append(
            f"reference (no kill): SUCCEEDED, import {t_import:.1f} s, embedding {t_embed:.1f} s, "
            f"PCA map {t_map:.1f} s, {ROWS} rows"
        )
        print(f"\n{RESULTS[-1]}")
        yield w
    finally:
        for s in (*w.old_stubs, w.stubs):
            await s.close()


# --- calls ------------------------------------------------------------------------------


async def upload(w: World) -> str:
    md = w.owner.md
    made = await w.stubs.ingest.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=w.project, upload=ingest_pb2.Upload(filename="packages.csv", size_bytes=len(w.data))
        ),
        metadata=md,
    )
    await w.stubs.ingest.AppendUploadChunk(
        ingest_pb2.AppendUploadChunkRequest(name=made.name, offset=0, data=w.data), metadata=md
    )
    dataset = await w.stubs.ingest.FinishUpload(ingest_pb2.FinishUploadRequest(name=made.name), metadata=md)
    return str(dataset.name)


async def create_embedding(w: World) -> str:
    made = await w.stubs.embedding.CreateEmbedding(
        embedding_pb2.CreateEmbeddingRequest(
            parent=w.dataset, embedding=embedding_pb2.Embedding(text_columns=["summary"])
        ),
        metadata=w.owner.md,
    )
    return str(made.name)


async def create_map(w: World, pca: bool = False) -> str:
    method = projection_pb2.PROJECTION_METHOD_PCA if pca else projection_pb2.PROJECTION_METHOD_UMAP
    made = await w.stubs.projection.CreateProjection(
        projection_pb2.CreateProjectionRequest(
            parent=w.embedding,
            projection=projection_pb2.Projection(
                method=method,
                dimensions=2,
                seed=5,
                # many neighbours: a fit of 1,200 rows that lasts seconds, long enough to be
                # caught in its stage and killed there
                umap=None if pca else projection_pb2.UmapParams(n_neighbors=400),
                # k-means on the map's points: these tests are about faults, not clusters
                clustering=projection_pb2.ClusterParams(
                    algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS, k=8, space=projection_pb2.CLUSTER_SPACE_PROJECTED
                ),
            ),
        ),
        metadata=w.owner.md,
    )
    return str(made.name)


async def get_dataset(w: World, name: str) -> ingest_pb2.Dataset:
    return await w.stubs.ingest.GetDataset(ingest_pb2.GetDatasetRequest(name=name), metadata=w.owner.md, timeout=10)


async def get_embedding(w: World, name: str) -> embedding_pb2.Embedding:
    request = embedding_pb2.GetEmbeddingRequest(name=name)
    return await w.stubs.embedding.GetEmbedding(request, metadata=w.owner.md, timeout=10)


async def get_projection(w: World, name: str) -> projection_pb2.Projection:
    request = projection_pb2.GetProjectionRequest(name=name)
    return await w.stubs.projection.GetProjection(request, metadata=w.owner.md, timeout=10)


def watch_call(w: World, kind: str, name: str) -> Any:
    md, s = w.owner.md, 900
    if kind == "dataset":
        return w.stubs.ingest.WatchDataset(ingest_pb2.WatchDatasetRequest(name=name), metadata=md, timeout=s)
    if kind == "embedding":
        return w.stubs.embedding.WatchEmbedding(embedding_pb2.WatchEmbeddingRequest(name=name), metadata=md, timeout=s)
    return w.stubs.projection.WatchProjection(projection_pb2.WatchProjectionRequest(name=name), metadata=md, timeout=s)


async def watch_resource(call: Any, kind: str) -> tuple[Any, grpc.StatusCode | None]:
    """Follow a Watch to its end: (the last resource seen, the error code it ended with)."""
    last = None
    try:
        async for update in call:
            last = getattr(update, kind)
    except grpc.aio.AioRpcError as exc:
        return last, exc.code()
    return last, None


async def settle(get: Callable[[], Awaitable[T]], within: float) -> T:
    """Poll until the job has ended, riding out a service that is still coming back."""
    deadline = time.monotonic() + within
    current: Any = None
    while True:
        try:
            current = await get()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            current = None
        if current is not None and current.job.state in ENDED:
            return current  # type: ignore[no-any-return]
        job = current.job if current is not None else None
        assert time.monotonic() < deadline, f"not ended after {within:.0f} s: {job}"
        await asyncio.sleep(0.5)


async def read_vectors(w: World, name: str) -> np.ndarray:
    chunks = [
        c
        async for c in w.stubs.embedding_internal.StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=name, chunk_rows=500), metadata=w.owner.md, timeout=60
        )
    ]
    assert [c.start_row for c in chunks] == list(range(0, ROWS, 500)), [(c.start_row, c.row_count) for c in chunks]
    return np.frombuffer(b"".join(c.vectors for c in chunks), dtype="<f4").reshape(-1, chunks[0].dimension)


async def assert_rows_are_the_table(w: World, dataset: str) -> None:
    """Every source row exactly once, in order, with its text intact."""
    parts = []
    async for chunk in w.stubs.ingest_internal.StreamRows(
        ingest_pb2.StreamRowsRequest(dataset=dataset, columns=["name", "summary"], batch_rows=500),
        metadata=w.owner.md,
        timeout=60,
    ):
        parts.append(pa.ipc.open_stream(chunk.arrow_ipc).read_all())
    read = pa.concat_tables(parts)
    assert read.column("name").to_pylist() == [r["name"] for r in w.table]
    assert read.column("summary").to_pylist() == [r["summary"] for r in w.table]


async def assert_vectors_match_the_reference(w: World, name: str) -> float:
    vectors = await read_vectors(w, name)
    assert vectors.shape == w.vectors.shape
    cosine = (vectors * w.vectors).sum(axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(w.vectors, axis=1))
    worst = float(cosine.min())
    assert worst > MIN_COSINE, f"row {int(cosine.argmin())} differs from the uninterrupted run: cosine {worst:.6f}"
    return worst


async def assert_points_once(w: World, name: str) -> None:
    chunks = [
        c
        async for c in w.stubs.projection.StreamPoints(
            projection_pb2.StreamPointsRequest(name=name), metadata=w.owner.md, timeout=60
        )
    ]
    indexes = np.concatenate([np.frombuffer(c.row_indexes, dtype="<u4") for c in chunks])
    assert sorted(indexes.tolist()) == list(range(ROWS))  # every row once
    coordinates = np.concatenate([np.frombuffer(c.coordinates, dtype="<f4") for c in chunks])
    assert np.isfinite(coordinates).all()


async def state_in_database(connection: asyncpg.Connection, table: str, name: str) -> str:
    return str(await connection.fetchval(f"SELECT state FROM {table} WHERE id = $1", name.rsplit("/", 1)[-1]))


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float, every: float = 0.2) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(every)


def fit_children(stack: Stack) -> list[int]:
    """The projection service's fitting processes (`python -m services.projection.fits`)."""
    parent = stack._procs["projection"].pid
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"services.projection.fits" in command:
            found.append(int(entry.name))
    return found


def record(part: str, started: float, outcome: str) -> None:
    RESULTS.append(f"kill {part}: {outcome} in {time.monotonic() - started:.1f} s")
    print(f"\n{RESULTS[-1]}")


# --- the cases --------------------------------------------------------------------------


@pytest.mark.timeout(2400)  # includes the stack's start and the reference run
async def test_an_import_survives_a_killed_ingest(world: World) -> None:
    """Ingest is frozen the moment its import is RUNNING, seen still RUNNING, then SIGKILLed."""
    started = time.monotonic()
    await world.login()
    stack = world.stack
    database = await asyncpg.connect(stack.pg_dsn)
    try:
        attempts = 0
        while attempts < 6:
            attempts += 1
            dataset = await upload(world)
            watcher = asyncio.create_task(watch_resource(watch_call(world, "dataset", dataset), "dataset"))
            deadline = time.monotonic() + 60
            while await state_in_database(database, "ingest.datasets", dataset) == "PENDING":
                assert time.monotonic() < deadline, "the import never started"
                await asyncio.sleep(0.003)
            ingest = stack._procs["ingest"]
            ingest.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.3)  # a commit already on its way lands
            if await state_in_database(database, "ingest.datasets", dataset) == "RUNNING":
                break
            ingest.send_signal(signal.SIGCONT)  # it finished first: try again
            await watcher
        else:
            pytest.fail("every import finished before ingest could be stopped")
    finally:
        await database.close()
    stack.kill("ingest")
    held, code = await asyncio.wait_for(watcher, 30)
    assert code == grpc.StatusCode.UNAVAILABLE, (code, held)
    stack.restart("ingest")
    world.reconnect()
    done = await settle(lambda: get_dataset(world, dataset), ACK_WAIT_S * 4 + 60)
    await world.login()
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert done.row_count == ROWS
    last, code = await watch_resource(watch_call(world, "dataset", dataset), "dataset")
    assert code is None and last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, (code, last)
    await assert_rows_are_the_table(world, dataset)
    record(
        "ingest (during import)",
        started,
        f"SUCCEEDED, {ROWS} rows once and in order (caught RUNNING at try {attempts}); "
        "the held Watch ended UNAVAILABLE",
    )


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("part", ["embedding", "auth", "nats", "postgres"])
async def test_an_embedding_survives_a_killed_part(world: World, part: str) -> None:
    started = time.monotonic()
    await world.login()
    stack = world.stack
    name = await create_embedding(world)
    watcher = asyncio.create_task(watch_resource(watch_call(world, "embedding", name), "embedding"))

    async def mid_way() -> bool:
        current = await get_embedding(world, name)
        assert current.job.state not in ENDED, f"the embedding ended before the kill: {current.job}"
        return current.job.done >= ROWS // 5

    await until(mid_way, "the embedding never got going", SLOW_S)
    done_at_kill = (await get_embedding(world, name)).job.done
    stack.kill(part)
    if part == "embedding":
        held, code = await asyncio.wait_for(watcher, 30)
        assert code == grpc.StatusCode.UNAVAILABLE, (code, held)
    stack.restart(part)
    world.reconnect()
    done = await settle(lambda: get_embedding(world, name), SLOW_S)
    await world.login()
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert done.row_count == ROWS
    if part != "embedding":
        # served by a process that lived on: it follows the job to its end, or ends UNAVAILABLE
        held, code = await asyncio.wait_for(watcher, 120)
        assert code in (None, grpc.StatusCode.UNAVAILABLE), code
        if code is None:
            assert held is not None and held.job.state == job_pb2.JOB_STATE_SUCCEEDED, held
    held_watch = "ended UNAVAILABLE" if code else "followed the job to SUCCEEDED"
    last, code = await watch_resource(watch_call(world, "embedding", name), "embedding")
    assert code is None and last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, (code, last)
    worst = await assert_vectors_match_the_reference(world, name)
    record(
        f"{part} (during embedding, {done_at_kill}/{ROWS} rows done)",
        started,
        f"SUCCEEDED, {ROWS} vectors, lowest cosine to the reference {worst:.6f}; the held Watch {held_watch}",
    )


async def until_fitting(world: World, name: str) -> str:
    stage = ""

    async def fitting() -> bool:
        nonlocal stage
        current = await get_projection(world, name)
        assert current.job.state not in ENDED, f"the map ended before the kill: {current.job}"
        stage = current.job.stage
        return stage in FIT_STAGES

    await until(fitting, "the map never reached its fit", SLOW_S, every=0.1)
    return stage


@pytest.mark.timeout(1200)
async def test_a_map_survives_a_killed_projection_service(world: World) -> None:
    started = time.monotonic()
    await world.login()
    name = await create_map(world)
    watcher = asyncio.create_task(watch_resource(watch_call(world, "projection", name), "projection"))
    stage = await until_fitting(world, name)
    world.stack.kill("projection")
    held, code = await asyncio.wait_for(watcher, 30)
    assert code == grpc.StatusCode.UNAVAILABLE, (code, held)
    world.stack.restart("projection")
    world.reconnect()
    done = await settle(lambda: get_projection(world, name), SLOW_S)
    await world.login()
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert done.point_count == ROWS
    last, code = await watch_resource(watch_call(world, "projection", name), "projection")
    assert code is None and last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, (code, last)
    await assert_points_once(world, name)
    outcome = f"SUCCEEDED, {ROWS} points once; the held Watch ended UNAVAILABLE"
    record(f"projection (during UMAP {stage})", started, outcome)


@pytest.mark.timeout(1200)
async def test_a_map_whose_fitting_process_is_killed_fails_saying_so_and_a_retry_succeeds(world: World) -> None:
    """A fitting child killed from outside looks like an out-of-memory kill: the map ends
    FAILED saying so (the same fit would likely die again), the service stays up, gives the
    slot a new child, and the same map asked for again succeeds."""
    started = time.monotonic()
    await world.login()
    name = await create_map(world)
    watcher = asyncio.create_task(watch_resource(watch_call(world, "projection", name), "projection"))
    stage = await until_fitting(world, name)
    children = fit_children(world.stack)
    assert children, "no fitting process found under the projection service"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    done = await settle(lambda: get_projection(world, name), 120)
    await world.login()
    held, code = await asyncio.wait_for(watcher, 30)  # its server lived on: it saw the end
    assert code is None and held is not None and held.job.state == done.job.state, (code, held)
    if done.job.state == job_pb2.JOB_STATE_FAILED:
        error = done.job.error
        assert "the fitting process was killed by SIGKILL" in error and "try again" in error, error
        assert world.stack._procs["projection"].poll() is None, "the projection service died with its child"
        outcome = f"FAILED ({done.job.error!r}), the retry SUCCEEDED"
        name = await create_map(world)
        done = await settle(lambda: get_projection(world, name), SLOW_S)
        await world.login()
    else:
        outcome = "SUCCEEDED"
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert done.point_count == ROWS
    await assert_points_once(world, name)
    record(f"projection fitting process (during UMAP {stage})", started, f"{outcome}, {ROWS} points once")


@pytest.mark.timeout(120)
async def test_no_job_is_left_running(world: World) -> None:
    connection = await asyncpg.connect(world.stack.pg_dsn)
    try:
        for table in ("ingest.datasets", "embedding.embeddings", "projection.projections"):
            left = await connection.fetch(f"SELECT id, state, stage FROM {table} WHERE state IN ('PENDING', 'RUNNING')")
            assert not left, f"{table}: {[dict(r) for r in left]}"
    finally:
        await connection.close()
