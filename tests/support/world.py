"""Real users and real resources on the `stack`, made over gRPC straight to the services:
sign-up, a project with members added by email, datasets imported from the small text
tables, embeddings and projections run to completion. Shared by the role matrix, the
token and the worker-identity tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import asyncpg
import grpc

from embedviz.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    job_pb2,
    projection_pb2,
    projection_pb2_grpc,
)
from services.auth.key_encryption import KeyEncryption
from services.stack import Stack
from tests.support.texts import csv_bytes, rows

PASSWORD = "correct horse battery"


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass
class Person:
    email: str
    user: str  # users/{id}
    token: str
    refresh_token: str

    @property
    def user_id(self) -> str:
        return self.user.removeprefix("users/")

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token)


class Stubs:
    def __init__(self, stack: Stack) -> None:
        self.channels = {
            name: grpc.aio.insecure_channel(stack.addrs[name]) for name in ("auth", "ingest", "embedding", "projection")
        }
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channels["auth"])
        self.auth_internal = auth_pb2_grpc.AuthInternalServiceStub(self.channels["auth"])
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self.channels["ingest"])
        self.ingest_internal = ingest_pb2_grpc.IngestInternalServiceStub(self.channels["ingest"])
        self.embedding = embedding_pb2_grpc.EmbeddingServiceStub(self.channels["embedding"])
        self.embedding_internal = embedding_pb2_grpc.EmbeddingInternalServiceStub(self.channels["embedding"])
        self.projection = projection_pb2_grpc.ProjectionServiceStub(self.channels["projection"])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()

    async def sign_up(self, label: str = "u") -> Person:
        email = f"{label}-{uuid.uuid4().hex[:10]}@example.org"
        response = await self.auth.SignUp(auth_pb2.SignUpRequest(email=email, password=PASSWORD))
        return Person(email, response.user.name, response.session.access_token, response.session.refresh_token)

    async def make_project(self, owner: Person, title: str = "shared") -> str:
        made = await self.ingest.CreateProject(
            ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name=title)), metadata=owner.md
        )
        return made.name

    async def add_member(self, owner: Person, project: str, who: Person, role: int) -> ingest_pb2.Member:
        return await self.ingest.CreateMember(
            ingest_pb2.CreateMemberRequest(parent=project, member=ingest_pb2.Member(email=who.email, role=role)),
            metadata=owner.md,
        )

    async def make_dataset(self, who: Person, project: str, n_rows: int = 100, wait: bool = True) -> str:
        return await self.upload(who, project, csv_bytes(rows(n_rows)), "notes.csv", wait)

    async def upload(self, who: Person, project: str, data: bytes, filename: str, wait: bool = True) -> str:
        """A dataset of the file (one chunk), imported when `wait`."""
        upload = await self.ingest.CreateUpload(
            ingest_pb2.CreateUploadRequest(
                parent=project, upload=ingest_pb2.Upload(filename=filename, size_bytes=len(data))
            ),
            metadata=who.md,
        )
        await self.ingest.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=data), metadata=who.md
        )
        dataset = await self.ingest.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=who.md)
        if wait:
            last = await self.watch_dataset(who, dataset.name, timeout=120)
            assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
        return dataset.name

    # Each Watch below follows a resource until its job ends and returns its last state
    # (None when the stream sent nothing).

    async def watch_dataset(self, who: Person, name: str, timeout: float = 120) -> ingest_pb2.Dataset | None:
        last = None
        async for update in self.ingest.WatchDataset(
            ingest_pb2.WatchDatasetRequest(name=name), metadata=who.md, timeout=timeout
        ):
            last = update.dataset
        return last

    async def watch_embedding(self, who: Person, name: str, timeout: float = 180) -> embedding_pb2.Embedding | None:
        last = None
        async for update in self.embedding.WatchEmbedding(
            embedding_pb2.WatchEmbeddingRequest(name=name), metadata=who.md, timeout=timeout
        ):
            last = update.embedding
        return last

    async def watch_projection(self, who: Person, name: str, timeout: float = 180) -> projection_pb2.Projection | None:
        last = None
        async for update in self.projection.WatchProjection(
            projection_pb2.WatchProjectionRequest(name=name), metadata=who.md, timeout=timeout
        ):
            last = update.projection
        return last

    async def make_embedding(self, who: Person, dataset: str, wait: bool = True) -> str:
        made = await self.embedding.CreateEmbedding(
            embedding_pb2.CreateEmbeddingRequest(
                parent=dataset, embedding=embedding_pb2.Embedding(text_columns=["text"])
            ),
            metadata=who.md,
        )
        if wait:
            last = await self.watch_embedding(who, made.name)
            assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
        return made.name

    async def make_projection(self, who: Person, embedding: str, wait: bool = True) -> str:
        made = await self.projection.CreateProjection(
            projection_pb2.CreateProjectionRequest(
                parent=embedding,
                projection=projection_pb2.Projection(
                    method=projection_pb2.PROJECTION_METHOD_PCA,
                    dimensions=2,
                    seed=1,
                    # k-means on the map's points: the tests using this are about access, not clusters
                    clustering=projection_pb2.ClusterParams(
                        algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS,
                        k=3,
                        space=projection_pb2.CLUSTER_SPACE_PROJECTED,
                    ),
                ),
            ),
            metadata=who.md,
        )
        if wait:
            last = await self.watch_projection(who, made.name)
            assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
        return made.name


async def signing_keys(stack: Stack) -> list[tuple[str, str]]:
    """(kid, private PEM) of the auth service's keys, newest first, read from its table and
    opened with the key-encryption key the stack gives auth (the table alone is not enough)."""
    connection = await asyncpg.connect(stack.pg_dsn)
    try:
        found = await connection.fetch(
            "SELECT kid, sealed_private_key FROM auth.signing_keys WHERE retire_time IS NULL ORDER BY create_time DESC"
        )
    finally:
        await connection.close()
    sealing = KeyEncryption.from_env(stack.service_env("auth"))
    return [(r["kid"], sealing.open(r["kid"], r["sealed_private_key"])) for r in found]


async def eventually(check, timeout: float = 20.0, every: float = 0.3):  # type: ignore[no-untyped-def]
    """Run `check` until it stops raising AssertionError (caches expire on their own time)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(every)
