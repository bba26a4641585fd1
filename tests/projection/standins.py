"""Stand-ins for auth, ingest and embedding, served over real gRPC (and JWKS over real
HTTP), holding a small labelled dataset with real vectors: what the projection service
reads from the other three, so its suites pin down the projection service alone."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import jwt
import numpy as np
import pyarrow as pa
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2
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

ISSUER = "embedviz-auth"
KID = "projection-depth-key"
PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_JWK = jwt.PyJWK(
    {**jwt.algorithms.ECAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True), "kid": KID, "alg": "ES256"}
)
JWKS = {
    "keys": [
        {
            **jwt.algorithms.ECAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True),
            "kid": KID,
            "alg": "ES256",
            "use": "sig",
        }
    ]
}


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


async def keys(kid: str) -> jwt.PyJWK | None:
    return PUBLIC_JWK if kid == KID else None


def caller(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(jwt.decode(value.split(" ", 1)[1], options={"verify_signature": False})["sub"])
    return ""


@dataclass
class Dataset:
    table: pa.Table  # the rows; row i is vector i


@dataclass
class World:
    """Who may see what, the datasets and their embeddings."""

    project: str
    roles: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    # embedding name -> (dataset name, vectors, state, text columns)
    embeddings: dict[str, tuple[str, np.ndarray, int, list[str]]] = field(default_factory=dict)
    model: Any = None  # encodes query texts (a SentenceTransformer), or None

    def embed(self, texts: list[str]) -> np.ndarray:
        assert self.model is not None
        return np.asarray(self.model.encode(texts, normalize_embeddings=True), dtype=np.float32)


class StandIns(
    ingest_pb2_grpc.IngestServiceServicer,
    ingest_pb2_grpc.IngestInternalServiceServicer,
    embedding_pb2_grpc.EmbeddingServiceServicer,
    embedding_pb2_grpc.EmbeddingInternalServiceServicer,
    auth_pb2_grpc.AuthInternalServiceServicer,
):
    def __init__(self, world: World) -> None:
        self.world = world

    async def _visible(self, context: grpc.aio.ServicerContext, name: str) -> None:
        if caller(context) not in self.world.roles or not name.startswith(self.world.project + "/"):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{name} not found")

    # ingest
    async def GetProjectRole(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        role = self.world.roles.get(caller(context)) if request.project == self.world.project else None
        if role is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.project} not found")
        return ingest_pb2.GetProjectRoleResponse(role=role, user=f"users/{caller(context)}")

    async def GetDataset(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._visible(context, request.name)
        table = self.world.datasets[request.name].table
        return ingest_pb2.Dataset(
            name=request.name,
            columns=[ingest_pb2.Column(name=f.name, type=str(f.type)) for f in table.schema],
            row_count=table.num_rows,
            job=job_pb2.Job(state=job_pb2.JOB_STATE_SUCCEEDED),
        )

    async def StreamRows(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await self._visible(context, request.dataset)
        table = self.world.datasets[request.dataset].table
        table = table.select(list(request.columns)) if request.columns else table
        stop = table.num_rows if not request.row_count else min(table.num_rows, request.start_row + request.row_count)
        step = 97  # batches that do not line up with anything
        for start in range(int(request.start_row), stop, step):
            part = table.slice(start, min(step, stop - start))
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, part.schema) as writer:
                writer.write_table(part)
            yield ingest_pb2.StreamRowsResponse(
                start_row=start, row_count=part.num_rows, arrow_ipc=sink.getvalue().to_pybytes()
            )

    async def ListRows(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._visible(context, request.parent)
        table = self.world.datasets[request.parent].table
        columns = list(request.columns) or table.column_names
        needle = request.filter.lower()
        rows = []
        for i in range(table.num_rows):
            values = [table.column(c)[i].as_py() for c in columns]
            if needle in " ".join(str(v) for v in values).lower():
                rows.append(ingest_pb2.Row(index=i, values=[struct_pb2.Value(string_value=str(v)) for v in values]))
        return ingest_pb2.ListRowsResponse(columns=columns, rows=rows, total_size=len(rows))

    # embedding
    async def GetEmbedding(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._visible(context, request.name)
        if request.name not in self.world.embeddings:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        _, vectors, state, columns = self.world.embeddings[request.name]
        return embedding_pb2.Embedding(
            name=request.name, model="models/minilm", text_columns=columns, dimension=vectors.shape[1],
            row_count=len(vectors), job=job_pb2.Job(state=state),
        )

    async def StreamVectors(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await self._visible(context, request.embedding)
        _, vectors, _, _ = self.world.embeddings[request.embedding]
        step = request.chunk_rows or 4096
        for start in range(0, len(vectors), step):
            block = np.ascontiguousarray(vectors[start : start + step])
            yield embedding_pb2.StreamVectorsResponse(
                start_row=start, row_count=len(block), dimension=vectors.shape[1], vectors=block.astype("<f4").tobytes()
            )

    async def EmbedTexts(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        vectors = self.world.embed(list(request.texts))
        return embedding_pb2.EmbedTextsResponse(dimension=vectors.shape[1], vectors=vectors.astype("<f4").tobytes())

    # auth
    async def IssueDelegatedToken(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        expires = Timestamp()
        expires.FromSeconds(int(time.time()) + 900)
        return auth_pb2.IssueDelegatedTokenResponse(
            access_token=token(request.user.removeprefix("users/"), "embedviz-internal"),
            access_token_expire_time=expires,
        )


async def serve(world: World) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    )
    standins = StandIns(world)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(standins, server)
    ingest_pb2_grpc.add_IngestInternalServiceServicer_to_server(standins, server)
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(standins, server)
    embedding_pb2_grpc.add_EmbeddingInternalServiceServicer_to_server(standins, server)
    auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(standins, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def serve_jwks() -> tuple[web.AppRunner, str]:
    """/.well-known/jwks.json over HTTP, for service processes that fetch keys."""
    app = web.Application()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response(JWKS)

    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/.well-known/jwks.json"


def new_user() -> str:
    return str(uuid.uuid4())
