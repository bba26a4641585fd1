"""Embedding jobs across real worker processes: `python -m services.embedding` (gRPC, no
workers) and `python -m services.embedding worker` processes that this test starts and
SIGKILLs, on real PostgreSQL and NATS JetStream. Ingest and auth are stand-ins served
over gRPC (and a JWKS endpoint over HTTP) from this process, so the datasets can grow."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import jwt
import numpy as np
import pyarrow as pa
import pytest
import pytest_asyncio
from aiohttp import web

from embedviz.v1 import auth_pb2_grpc, embedding_pb2, embedding_pb2_grpc, ingest_pb2_grpc, job_pb2
from services.stack import Stack
from services.stack.stack import free_ports
from tests.embedding.test_service import (
    KID,
    OWNER,
    PRIVATE_KEY,
    PROJECT,
    StandInAuth,
    StandInIngest,
    auth,
    expect_error,
)
from tests.support.texts import rows as topic_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORK = f"{PROJECT}/datasets/work"  # 1200 rows: 4 shards of 300, checkpoints every 100
GROWING = f"{PROJECT}/datasets/growing"
NULLS = f"{PROJECT}/datasets/nulls"
SHARD_ROWS = 300
CHECKPOINT_ROWS = 100
SMALL = f"{PROJECT}/datasets/small"

WORK_ROWS = pa.table({"text": [f"{row['text']} ({row['title']})" for row in topic_rows(1200)]})
GROWING_ALL = pa.table({"text": [row["text"] + f" #{i}" for i, row in enumerate(topic_rows(500, seed=3))]})
NULL_ROWS = pa.table({"text": ["a cat on a mat", None, "", "   ", None, "dogs bark at night", ""]})


class Ingest(StandInIngest):
    datasets = {
        WORK: (WORK_ROWS, job_pb2.JOB_STATE_SUCCEEDED),
        GROWING: (GROWING_ALL.slice(0, 300), job_pb2.JOB_STATE_SUCCEEDED),
        NULLS: (NULL_ROWS, job_pb2.JOB_STATE_SUCCEEDED),
        SMALL: (GROWING_ALL.slice(0, 120), job_pb2.JOB_STATE_SUCCEEDED),
    }


@dataclasses.dataclass
class Cluster:
    env: dict[str, str]
    logs: Path
    blob_root: Path
    pg_dsn: str
    embedding: embedding_pb2_grpc.EmbeddingServiceStub
    internal: embedding_pb2_grpc.EmbeddingInternalServiceStub
    workers: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    served: list[int] = dataclasses.field(default_factory=list)  # rows the HTTP provider embedded
    model: Any = None  # the packaged model behind the HTTP provider

    async def shared_worker(self) -> subprocess.Popen[bytes]:
        """One worker kept running for the tests that need any worker."""
        alive = [p for p in self.workers if p.poll() is None]
        if alive:
            return alive[0]
        process = self.start_worker("shared")
        await self.wait_ready(process)
        return process

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, "-m", "services.embedding", "worker"], cwd=REPO, env=self.env, stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(process)
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        for path in self.logs.glob("*.log"):
            text = path.read_text(errors="replace")
            if f"/{process.pid}/0 is taking work" in text:
                return text
        return ""

    async def wait_ready(self, process: subprocess.Popen[bytes], timeout: float = 240) -> None:
        # A worker imports torch and connects before it takes work: seconds on a quiet machine,
        # over 90 s once while the suite kept both cores busy.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert process.poll() is None, "the worker process exited"
            if self.log(process):
                return
            await asyncio.sleep(0.2)
        raise AssertionError("the worker did not start taking work")

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.workers.clear()


def jwks() -> dict[str, Any]:
    key = jwt.algorithms.ECAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True)
    return {"keys": [{**key, "kid": KID, "alg": "ES256", "use": "sig"}]}


async def serve_http(served: list[int]) -> tuple[web.AppRunner, int, Any]:
    """JWKS for the processes, and an OpenAI-compatible POST /v1/embeddings that embeds
    with the real packaged model."""
    from sentence_transformers import SentenceTransformer

    from services.common.config import _default_model_path

    model = SentenceTransformer(_default_model_path(), device="cpu")

    async def keys(request: web.Request) -> web.Response:
        return web.json_response(jwks())

    async def embeddings(request: web.Request) -> web.Response:
        if request.headers.get("authorization") != "Bearer sk-test":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if body.get("model") != "local-minilm" or any(not t for t in texts):
            return web.json_response({"error": {"message": "bad request"}}, status=400)
        vectors = await asyncio.to_thread(model.encode, texts, normalize_embeddings=True)
        served.append(len(texts))
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", keys)
    app.router.add_post("/v1/embeddings", embeddings)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port, model


@pytest_asyncio.fixture(scope="module")
async def cluster(infra: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    others = grpc.aio.server()
    ingest = Ingest()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, others)
    ingest_pb2_grpc.add_IngestInternalServiceServicer_to_server(ingest, others)
    auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(StandInAuth(), others)
    others_port = others.add_insecure_port("127.0.0.1:0")
    await others.start()
    served: list[int] = []
    runner, http_port, model = await serve_http(served)

    root = tmp_path_factory.mktemp("workers")
    (root / "logs").mkdir()
    (embedding_port,) = free_ports(1)
    env = {
        **os.environ,
        **infra.env,
        "EMBEDVIZ_BLOB_ROOT": str(root / "blobs"),
        "EMBEDVIZ_INGEST_ADDR": f"127.0.0.1:{others_port}",
        "EMBEDVIZ_AUTH_ADDR": f"127.0.0.1:{others_port}",
        "EMBEDVIZ_JWKS_URL": f"http://127.0.0.1:{http_port}/.well-known/jwks.json",
        "EMBEDVIZ_INTERNAL_SECRET": "test-secret",
        "EMBEDVIZ_EMBEDDING_ADDR": f"127.0.0.1:{embedding_port}",
        "EMBEDVIZ_WORKERS": "0",
        "EMBEDVIZ_EMBED_SHARD_ROWS": str(SHARD_ROWS),
        "EMBEDVIZ_EMBED_CHECKPOINT_ROWS": str(CHECKPOINT_ROWS),
        "EMBEDVIZ_EMBED_ACK_WAIT": "4",
        "EMBEDVIZ_EMBED_HEARTBEAT": "0.3",
        "EMBEDVIZ_TORCH_THREADS": "1",
        "EMBEDVIZ_MODELS": json.dumps(
            [
                {"name": "ghost", "path": str(root / "no-such-model")},
                {"name": "local-minilm", "provider": "openai", "base_url": f"http://127.0.0.1:{http_port}/v1",
                 "api_key": "sk-test", "batch_size": 50},
            ]
        ),
        "HF_HUB_OFFLINE": "1",
    }
    service_log = open(root / "logs" / "service.log", "wb")  # noqa: SIM115
    service = subprocess.Popen([sys.executable, "-m", "services.embedding"], cwd=REPO, env=env,
                               stdout=service_log, stderr=subprocess.STDOUT)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{embedding_port}")
    running = Cluster(
        env, root / "logs", root / "blobs", infra.pg_dsn,
        embedding_pb2_grpc.EmbeddingServiceStub(channel), embedding_pb2_grpc.EmbeddingInternalServiceStub(channel),
        served=served,
        model=model,
    )
    try:
        await asyncio.wait_for(channel.channel_ready(), 60)
        yield running
    finally:
        running.stop_workers()
        service.terminate()
        service.wait(15)
        service_log.close()
        await channel.close()
        await runner.cleanup()
        await others.stop(1)


async def create(cluster: Cluster, dataset: str, **spec: Any) -> embedding_pb2.Embedding:
    spec.setdefault("text_columns", ["text"])
    return await cluster.embedding.CreateEmbedding(
        embedding_pb2.CreateEmbeddingRequest(parent=dataset, embedding=embedding_pb2.Embedding(**spec)),
        metadata=auth(OWNER),
    )


async def get(cluster: Cluster, name: str) -> embedding_pb2.Embedding:
    return await cluster.embedding.GetEmbedding(embedding_pb2.GetEmbeddingRequest(name=name), metadata=auth(OWNER))


async def finish(cluster: Cluster, name: str, timeout: float = 180) -> embedding_pb2.Embedding:
    last = None
    async for update in cluster.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=name), metadata=auth(OWNER), timeout=timeout
    ):
        last = update.embedding
    assert last is not None
    return last


async def vectors(cluster: Cluster, name: str) -> np.ndarray:
    chunks = [
        chunk
        async for chunk in cluster.internal.StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=name, chunk_rows=1000), metadata=auth(OWNER)
        )
    ]
    assert [c.start_row for c in chunks] == list(range(0, 1000 * len(chunks), 1000))
    return np.frombuffer(b"".join(c.vectors for c in chunks), dtype="<f4").reshape(-1, chunks[0].dimension)


async def shards(cluster: Cluster, name: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(cluster.pg_dsn)
    try:
        return await connection.fetch(
            'SELECT "index", start_row, end_row, workers, parts FROM embedding.shards '
            "WHERE embedding_id = $1 ORDER BY start_row",
            name.rsplit("/", 1)[1],
        )
    finally:
        await connection.close()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


_reference: dict[str, np.ndarray] = {}


async def reference(cluster: Cluster) -> np.ndarray:
    """The WORK dataset embedded by one worker that is left alone."""
    if "work" not in _reference:
        worker = cluster.start_worker("reference")
        await cluster.wait_ready(worker)
        created = await create(cluster, WORK)
        done = await finish(cluster, created.name)
        assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
        _reference["work"] = await vectors(cluster, created.name)
        cluster.stop_workers()
    return _reference["work"]


async def test_watch_sends_a_heartbeat_while_nothing_happens(cluster: Cluster) -> None:
    created = await create(cluster, NULLS)  # no worker is running: it stays pending
    stream = cluster.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=created.name), metadata=auth(OWNER), timeout=60
    )
    first = await stream.read()
    # The current state comes first, then the last event (the same state); then nothing
    # happens, and the state is sent again before a proxy's idle cut-off.
    while True:
        started = time.monotonic()
        heartbeat = await stream.read()
        waited = time.monotonic() - started
        if waited > 5:
            break
    assert first.embedding.job.state == heartbeat.embedding.job.state == job_pb2.JOB_STATE_PENDING
    assert waited < 30
    stream.cancel()
    await cluster.embedding.CancelEmbedding(
        embedding_pb2.CancelEmbeddingRequest(name=created.name), metadata=auth(OWNER)
    )


async def test_a_model_folder_that_does_not_exist_is_refused_at_creation(cluster: Cluster) -> None:
    listed = await cluster.embedding.ListModels(embedding_pb2.ListModelsRequest(), metadata=auth(OWNER))
    by_name = {m.name: m for m in listed.models}
    assert "does not exist" in by_name["models/ghost"].error and not by_name["models/ghost"].loaded
    assert by_name["models/all-minilm-l6-v2"].speed_hint == "fast"
    assert by_name["models/local-minilm"].provider == "openai"
    message = await expect_error(create(cluster, WORK, model="models/ghost"), grpc.StatusCode.FAILED_PRECONDITION)
    assert "the model folder" in message and "does not exist" in message and "EMBEDVIZ_MODELS" in message
    # The service is still up and serves the other models.
    assert (await cluster.embedding.ListModels(embedding_pb2.ListModelsRequest(), metadata=auth(OWNER))).models


async def test_a_killed_worker_is_replaced_and_the_job_resumes_from_its_checkpoint(cluster: Cluster) -> None:
    expected = await reference(cluster)
    first = cluster.start_worker("killed")
    await cluster.wait_ready(first)
    created = await create(cluster, WORK)
    for _ in range(1200):
        current = await get(cluster, created.name)
        if current.job.done >= 400:
            break
        await asyncio.sleep(0.05)
    assert current.job.state == job_pb2.JOB_STATE_RUNNING and current.job.done < 1200
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = cluster.start_worker("replacement")
    done = await finish(cluster, created.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.row_count, done.job.done, done.job.total) == (1200, 1200, 1200)
    got = await vectors(cluster, created.name)
    assert got.shape == expected.shape
    assert min_cosine(got, expected) > 0.99999  # same rows, same order
    # The replacement picked up at a checkpoint, not at the shard's first row.
    assert "resuming at row" in cluster.log(second)
    records = await shards(cluster, created.name)
    taken_over = [r for r in records if len(json.loads(r["workers"])) == 2]
    assert taken_over, "no shard was finished by the replacement worker"
    for record in records:
        parts = json.loads(record["parts"])
        assert parts[0][0] == record["start_row"] and parts[-1][1] == record["end_row"]
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))  # no gap, no overlap
    cluster.stop_workers()


async def test_two_workers_share_a_large_job(cluster: Cluster) -> None:
    expected = await reference(cluster)
    pool = [cluster.start_worker("pool-a"), cluster.start_worker("pool-b")]
    for process in pool:
        await cluster.wait_ready(process)
    created = await create(cluster, WORK)
    rates = []
    async for update in cluster.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=created.name), metadata=auth(OWNER), timeout=180
    ):
        job = update.embedding.job
        if job.state == job_pb2.JOB_STATE_RUNNING and job.rate > 0:
            rates.append((job.done, job.total, job.rate, job.eta_seconds))
        done = update.embedding
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    records = await shards(cluster, created.name)
    assert len(records) == 4
    owners = {json.loads(r["workers"])[-1].split("/")[1] for r in records}
    assert owners == {str(p.pid) for p in pool}, owners  # both took shards
    assert min_cosine(await vectors(cluster, created.name), expected) > 0.99999  # complete and ordered
    # Progress said how fast and how long.
    assert rates and all(total == 1200 and rate > 0 for _, total, rate, _ in rates)
    assert any(eta > 0 for *_, eta in rates)
    cluster.stop_workers()


async def test_cancel_stops_the_workers_and_removes_the_partial_vectors(cluster: Cluster) -> None:
    worker = await cluster.shared_worker()
    created = await create(cluster, WORK)
    for _ in range(1200):
        current = await get(cluster, created.name)
        if current.job.done >= 200:
            break
        await asyncio.sleep(0.05)
    await cluster.embedding.CancelEmbedding(
        embedding_pb2.CancelEmbeddingRequest(name=created.name), metadata=auth(OWNER)
    )
    cancelled_at = time.monotonic()
    final = await finish(cluster, created.name)
    assert final.job.state == job_pb2.JOB_STATE_CANCELLED
    folder = cluster.blob_root / "embeddings" / created.name.rsplit("/", 1)[1]
    log = ""
    while time.monotonic() - cancelled_at < 10:
        log = cluster.log(worker)
        if "stopped: JobCancelled" in log:
            break
        await asyncio.sleep(0.1)
    assert "stopped: JobCancelled" in log, "the worker did not stop within 10 s"
    assert not folder.exists() or not any(folder.rglob("*.arrow"))
    await expect_error(
        cluster.internal.StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=created.name), metadata=auth(OWNER)
        ).read(),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_null_and_empty_texts_are_embedded_as_empty_text(cluster: Cluster) -> None:
    await cluster.shared_worker()
    created = await create(cluster, NULLS, float16=True)
    done = await finish(cluster, created.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert done.row_count == 7 and done.float16
    got = await vectors(cluster, created.name)
    assert got.shape == (7, 384) and np.isfinite(got).all()
    np.testing.assert_array_equal(got[1], got[2])  # null and "" are the same text
    np.testing.assert_array_equal(got[4], got[6])
    assert got[0] @ got[5] < 0.9


async def test_extend_embeds_only_the_appended_rows(cluster: Cluster) -> None:
    await cluster.shared_worker()
    created = await create(cluster, GROWING)
    assert (await finish(cluster, created.name)).row_count == 300
    before = await vectors(cluster, created.name)
    await expect_error(
        cluster.embedding.ExtendEmbedding(
            embedding_pb2.ExtendEmbeddingRequest(name=created.name), metadata=auth(OWNER)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "no rows were appended",
    )
    Ingest.datasets[GROWING] = (GROWING_ALL, job_pb2.JOB_STATE_SUCCEEDED)  # 200 rows appended
    extending = await cluster.embedding.ExtendEmbedding(
        embedding_pb2.ExtendEmbeddingRequest(name=created.name), metadata=auth(OWNER)
    )
    assert extending.job.state == job_pb2.JOB_STATE_PENDING and extending.job.done == 300
    done = await finish(cluster, created.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert done.row_count == 500
    after = await vectors(cluster, created.name)
    np.testing.assert_array_equal(after[:300], before)  # the first rows were not embedded again
    fresh = await create(cluster, GROWING)
    assert (await finish(cluster, fresh.name)).row_count == 500
    assert min_cosine(after, await vectors(cluster, fresh.name)) > 0.99999
    # Only the new rows were embedded by the extension: its shards start at row 300.
    records = await shards(cluster, created.name)
    assert sorted((r["start_row"], r["end_row"]) for r in records) == [(0, 300), (300, 500)]


async def test_an_openai_compatible_endpoint_embeds_a_dataset(cluster: Cluster) -> None:
    await cluster.shared_worker()
    created = await create(cluster, SMALL, model="models/local-minilm")
    done = await finish(cluster, created.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.model, done.dimension, done.row_count) == ("models/local-minilm", 384, 120)
    got = await vectors(cluster, created.name)
    table, _ = Ingest.datasets[SMALL]
    plain = cluster.model.encode(table.column("text").to_pylist(), normalize_embeddings=True)
    assert got.shape == plain.shape and min_cosine(got, plain) > 0.9999
    assert sum(cluster.served) >= table.num_rows and max(cluster.served) <= 50
    answer = await cluster.embedding.EmbedTexts(
        embedding_pb2.EmbedTextsRequest(model="models/local-minilm", texts=["a cat"]), metadata=auth(OWNER)
    )
    assert answer.dimension == 384
    cluster.stop_workers()
