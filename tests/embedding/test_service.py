"""The embedding service over a real socket, with real PostgreSQL, NATS JetStream, blob
folder and model. Auth and ingest are small stand-ins served over gRPC here (the lead's
end-to-end test runs the real four services), so that this suite pins down the
embedding service alone: access rules, dataset checks, the job, the vectors."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import numpy as np
import pyarrow as pa
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.timestamp_pb2 import Timestamp

from embedviz.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    job_pb2,
)
from services.common.app import close_deps, open_deps
from services.common.config import Settings
from services.embedding.server import build
from services.embedding.texts import build_texts
from services.embedding.vectors import vectors_key
from services.stack import Stack

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "embedding" / "migrations"
ISSUER = "embedviz-auth"
KID = "test-key"
PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_JWK = jwt.PyJWK(
    {**jwt.algorithms.ECAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True), "kid": KID, "alg": "ES256"}
)

OWNER = str(uuid.uuid4())
VIEWER = str(uuid.uuid4())
STRANGER = str(uuid.uuid4())
PROJECT = "projects/p1"
DATASET = f"{PROJECT}/datasets/d1"
BIG = f"{PROJECT}/datasets/big"
IMPORTING = f"{PROJECT}/datasets/busy"

TITLES = ["cats", "dogs", "stock markets", "football", "cooking pasta", None]
ROWS = pa.table(
    {
        "title": [TITLES[i % len(TITLES)] for i in range(90)],
        "text": [f"note {i} about {TITLES[(i * 7) % 5]}" if i % 11 else None for i in range(90)],
        "label": list(range(90)),
    }
)
BIG_ROWS = pa.table({"title": [f"row {i} of a longer table about many things" for i in range(20000)]})


def token(user: str, audience: str = "embedviz") -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": audience,
        "sub": user,
        "email": f"{user}@x",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
    }
    return jwt.encode(claims, PRIVATE_KEY, algorithm="ES256", headers={"kid": KID})


def auth(user: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(user)}"),)


def caller(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(jwt.decode(value.split(" ", 1)[1], options={"verify_signature": False})["sub"])
    return ""


def dataset_message(name: str, table: pa.Table, state: int) -> ingest_pb2.Dataset:
    return ingest_pb2.Dataset(
        name=name,
        columns=[ingest_pb2.Column(name=f.name, type=str(f.type)) for f in table.schema],
        row_count=table.num_rows,
        job=job_pb2.Job(state=state),
    )


class StandInIngest(ingest_pb2_grpc.IngestServiceServicer, ingest_pb2_grpc.IngestInternalServiceServicer):
    roles = {OWNER: ingest_pb2.ROLE_OWNER, VIEWER: ingest_pb2.ROLE_VIEWER}
    datasets = {
        DATASET: (ROWS, job_pb2.JOB_STATE_SUCCEEDED),
        BIG: (BIG_ROWS, job_pb2.JOB_STATE_SUCCEEDED),
        IMPORTING: (ROWS, job_pb2.JOB_STATE_RUNNING),
    }

    async def GetProjectRole(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        role = self.roles.get(caller(context)) if request.project == PROJECT else None
        if role is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.project} not found")
        return ingest_pb2.GetProjectRoleResponse(role=role)

    async def GetDataset(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if caller(context) not in self.roles or request.name not in self.datasets:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        table, state = self.datasets[request.name]
        return dataset_message(request.name, table, state)

    async def StreamRows(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        table, _ = self.datasets[request.dataset]
        table = table.select(list(request.columns)) if request.columns else table
        step = request.batch_rows or 8192
        end = request.start_row + request.row_count if request.row_count else table.num_rows
        for start in range(request.start_row, min(end, table.num_rows), step):
            part = table.slice(start, min(step, end - start))
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, part.schema) as writer:
                writer.write_table(part)
            yield ingest_pb2.StreamRowsResponse(
                start_row=start, row_count=part.num_rows, arrow_ipc=sink.getvalue().to_pybytes()
            )


class StandInAuth(auth_pb2_grpc.AuthInternalServiceServicer):
    async def IssueDelegatedToken(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        expires = Timestamp()
        expires.FromSeconds(int(time.time()) + 900)
        user = request.user.removeprefix("users/")
        return auth_pb2.IssueDelegatedTokenResponse(
            access_token=token(user, "embedviz-internal"), access_token_expire_time=expires
        )


async def _keys(kid: str) -> jwt.PyJWK | None:
    return PUBLIC_JWK if kid == KID else None


@dataclasses.dataclass
class Running:
    embedding: embedding_pb2_grpc.EmbeddingServiceStub
    internal: embedding_pb2_grpc.EmbeddingInternalServiceStub
    blob_root: Path


@pytest_asyncio.fixture(scope="module")
async def service(infra: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    others = grpc.aio.server()
    ingest = StandInIngest()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, others)
    ingest_pb2_grpc.add_IngestInternalServiceServicer_to_server(ingest, others)
    auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(StandInAuth(), others)
    others_port = others.add_insecure_port("127.0.0.1:0")
    await others.start()

    blob_root = tmp_path_factory.mktemp("blobs")
    settings = dataclasses.replace(
        Settings.from_env(),
        database_url=infra.database_url,
        nats_url=infra.nats_url,
        blob_root=str(blob_root),
        ingest_addr=f"127.0.0.1:{others_port}",
        auth_addr=f"127.0.0.1:{others_port}",
        internal_secret="test-secret",
        workers=1,
    )
    deps = await open_deps("embedding", settings, "embedding", MIGRATIONS, keys=_keys)
    built = await build(deps)
    port = built.server.add_insecure_port("127.0.0.1:0")
    await built.server.start()
    stop = asyncio.Event()
    workers = [asyncio.create_task(job(stop)) for job in built.background]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(
            embedding_pb2_grpc.EmbeddingServiceStub(channel),
            embedding_pb2_grpc.EmbeddingInternalServiceStub(channel),
            blob_root,
        )
    finally:
        stop.set()
        await asyncio.wait(workers, timeout=10)
        await channel.close()
        await built.server.stop(1)
        await close_deps(deps)
        await others.stop(1)


async def expect_error(call: Any, code: grpc.StatusCode, text: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or "")
    return info.value.details() or ""


async def wait_until_done(service: Running, name: str) -> embedding_pb2.Embedding:
    last = None
    async for update in service.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=name), metadata=auth(OWNER), timeout=120
    ):
        last = update.embedding
    assert last is not None
    return last


async def test_list_models_shows_the_packaged_model(service: Running) -> None:
    response = await service.embedding.ListModels(embedding_pb2.ListModelsRequest(), metadata=auth(STRANGER))
    (model,) = response.models
    assert (model.name, model.dimension, model.max_tokens, model.provider, model.default) == (
        "models/all-minilm-l6-v2", 384, 256, "sentence-transformers", True
    )


async def test_calls_without_a_token_are_unauthenticated(service: Running) -> None:
    await expect_error(service.embedding.ListModels(embedding_pb2.ListModelsRequest()), grpc.StatusCode.UNAUTHENTICATED)


async def test_create_refuses_what_cannot_be_embedded(service: Running) -> None:
    def create(parent: str, user: str = OWNER, **spec: Any) -> Any:
        return service.embedding.CreateEmbedding(
            embedding_pb2.CreateEmbeddingRequest(parent=parent, embedding=embedding_pb2.Embedding(**spec)),
            metadata=auth(user),
        )

    await expect_error(
        create(DATASET, text_columns=["body"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "column 'body' not found; the dataset has: title, text, label",
    )
    await expect_error(
        create(IMPORTING, text_columns=["title"]), grpc.StatusCode.FAILED_PRECONDITION, "still importing"
    )
    await expect_error(
        create(DATASET, text_columns=["title"], model="models/gpt-9"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "models/all-minilm-l6-v2",
    )
    await expect_error(create(f"{PROJECT}/datasets/none", text_columns=["title"]), grpc.StatusCode.NOT_FOUND)
    await expect_error(create(DATASET, VIEWER, text_columns=["title"]), grpc.StatusCode.PERMISSION_DENIED)
    await expect_error(create(DATASET, STRANGER, text_columns=["title"]), grpc.StatusCode.NOT_FOUND)


async def test_embedding_a_dataset_streams_the_same_vectors_as_sentence_transformers(service: Running) -> None:
    created = await service.embedding.CreateEmbedding(
        embedding_pb2.CreateEmbeddingRequest(
            parent=DATASET,
            embedding=embedding_pb2.Embedding(
                text_columns=["title", "text"], template="{title}: {text}", project_when_done=True
            ),
        ),
        metadata=auth(OWNER),
    )
    assert created.name.startswith(f"{DATASET}/embeddings/")
    assert created.job.state == job_pb2.JOB_STATE_PENDING and created.model == "models/all-minilm-l6-v2"

    done = await wait_until_done(service, created.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.row_count, done.dimension, done.job.done, done.project_when_done) == (90, 384, 90, True)

    # A viewer may read it; a stranger does not learn that it exists.
    got = await service.embedding.GetEmbedding(
        embedding_pb2.GetEmbeddingRequest(name=created.name), metadata=auth(VIEWER)
    )
    assert got.job.state == job_pb2.JOB_STATE_SUCCEEDED
    await expect_error(
        service.embedding.GetEmbedding(embedding_pb2.GetEmbeddingRequest(name=created.name), metadata=auth(STRANGER)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        service.embedding.GetEmbedding(
            embedding_pb2.GetEmbeddingRequest(name=created.name.replace("/d1/", "/big/")), metadata=auth(OWNER)
        ),
        grpc.StatusCode.NOT_FOUND,
    )

    chunks = [
        chunk
        async for chunk in service.internal.StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=created.name, chunk_rows=32), metadata=auth(VIEWER)
        )
    ]
    assert [(c.start_row, c.row_count, c.dimension) for c in chunks] == [(0, 32, 384), (32, 32, 384), (64, 26, 384)]
    vectors = np.frombuffer(b"".join(c.vectors for c in chunks), dtype="<f4").reshape(90, 384)

    from sentence_transformers import SentenceTransformer

    from services.common.config import _default_model_path

    texts = build_texts(ROWS, ["title", "text"], "{title}: {text}")
    assert texts[0] == "cats: "  # a null becomes an empty string
    plain = SentenceTransformer(_default_model_path(), device="cpu").encode(texts, normalize_embeddings=True)
    # bfloat16 runs only where it matches float32 to a cosine of 0.999 (checked at load).
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (vectors * plain).sum(axis=1).min() >= 0.999

    await expect_error(
        service.embedding.DeleteEmbedding(
            embedding_pb2.DeleteEmbeddingRequest(name=created.name), metadata=auth(VIEWER)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await service.embedding.DeleteEmbedding(
        embedding_pb2.DeleteEmbeddingRequest(name=created.name), metadata=auth(OWNER)
    )
    await expect_error(
        service.embedding.GetEmbedding(embedding_pb2.GetEmbeddingRequest(name=created.name), metadata=auth(OWNER)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert not (service.blob_root / vectors_key(created.name.rsplit("/", 1)[1])).exists()


async def test_list_embeddings_pages_through_a_dataset(service: Running) -> None:
    names = []
    for _ in range(3):
        created = await service.embedding.CreateEmbedding(
            embedding_pb2.CreateEmbeddingRequest(
                parent=DATASET, embedding=embedding_pb2.Embedding(text_columns=["label"])
            ),
            metadata=auth(OWNER),
        )
        names.append(created.name)
    seen: list[str] = []
    page_token = ""
    while True:
        page = await service.embedding.ListEmbeddings(
            embedding_pb2.ListEmbeddingsRequest(parent=DATASET, page_size=2, page_token=page_token),
            metadata=auth(VIEWER),
        )
        assert len(page.embeddings) <= 2
        seen += [e.name for e in page.embeddings]
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen[-3:] == names
    for name in names:
        await wait_until_done(service, name)


async def test_cancelled_job_stops_and_leaves_no_vectors(service: Running) -> None:
    created = await service.embedding.CreateEmbedding(
        embedding_pb2.CreateEmbeddingRequest(parent=BIG, embedding=embedding_pb2.Embedding(text_columns=["title"])),
        metadata=auth(OWNER),
    )
    # Cancel once the worker is really under way, not before it starts nor after it ends.
    for _ in range(600):
        current = await service.embedding.GetEmbedding(
            embedding_pb2.GetEmbeddingRequest(name=created.name), metadata=auth(OWNER)
        )
        if current.job.done > 0:
            break
        await asyncio.sleep(0.05)
    assert current.job.state == job_pb2.JOB_STATE_RUNNING and current.job.done < current.job.total
    cancelled = await service.embedding.CancelEmbedding(
        embedding_pb2.CancelEmbeddingRequest(name=created.name), metadata=auth(OWNER)
    )
    assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
    final = await wait_until_done(service, created.name)
    assert final.job.state == job_pb2.JOB_STATE_CANCELLED
    await expect_error(
        service.internal.StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=created.name), metadata=auth(OWNER)
        ).read(),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    folder = service.blob_root / "embeddings" / created.name.rsplit("/", 1)[1]
    for _ in range(100):
        if not folder.exists() or not any(folder.iterdir()):
            break
        await asyncio.sleep(0.2)
    assert not folder.exists() or not any(folder.iterdir())
    await expect_error(
        service.embedding.ExtendEmbedding(
            embedding_pb2.ExtendEmbeddingRequest(name=created.name), metadata=auth(OWNER)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "once its job has succeeded",
    )


async def test_embed_texts_returns_normalised_little_endian_vectors(service: Running) -> None:
    response = await service.embedding.EmbedTexts(
        embedding_pb2.EmbedTextsRequest(texts=["a sleeping cat", "a napping kitten", "interest rates"]),
        metadata=auth(STRANGER),
    )
    vectors = np.frombuffer(response.vectors, dtype="<f4").reshape(3, response.dimension)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    await expect_error(
        service.embedding.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=["x"] * 65), metadata=auth(OWNER)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 64",
    )
    await expect_error(
        service.embedding.EmbedTexts(embedding_pb2.EmbedTextsRequest(texts=["ok", " "]), metadata=auth(OWNER)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "texts[1] is empty",
    )
