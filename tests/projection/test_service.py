"""The projection service over a real socket, with real PostgreSQL, NATS JetStream and
blob folder. Auth, ingest and embedding are small stand-ins served over gRPC here (the
lead's end-to-end test runs the real four services), so this suite pins down the
projection service alone: access rules, parameter checks, the job, points, clusters,
search and neighbours."""

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
    projection_pb2,
    projection_pb2_grpc,
)
from services.common.app import close_deps, open_deps
from services.common.config import Settings
from services.projection.labels import label_from
from services.projection.server import build
from services.stack import Stack

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "projection" / "migrations"
ISSUER = "embedviz-auth"
KID = "projection-test-key"
PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_JWK = jwt.PyJWK(
    {**jwt.algorithms.ECAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True), "kid": KID, "alg": "ES256"}
)

OWNER = str(uuid.uuid4())
VIEWER = str(uuid.uuid4())
STRANGER = str(uuid.uuid4())
PROJECT = "projects/p1"
DATASET = f"{PROJECT}/datasets/d1"
EMBEDDING = f"{DATASET}/embeddings/e1"
RUNNING_EMBEDDING = f"{DATASET}/embeddings/busy"
TINY_EMBEDDING = f"{DATASET}/embeddings/tiny"

TOPICS = [
    ["apple", "banana", "fruit", "orchard"],
    ["engine", "wheel", "car", "garage"],
    ["guitar", "song", "music", "concert"],
]
PER_TOPIC = 40
DIM = 16
_rng = np.random.default_rng(11)
CENTRES = _rng.normal(size=(3, DIM)).astype(np.float32) * 5
TRUTH = np.repeat(np.arange(3), PER_TOPIC)
VECTORS = (CENTRES[TRUTH] + _rng.normal(size=(len(TRUTH), DIM))).astype(np.float32)
TEXTS = [" ".join(_rng.choice(TOPICS[t], size=3).tolist()) + " and the thing" for t in TRUTH]
ROWS = pa.table({"text": TEXTS, "n": list(range(len(TEXTS)))})


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


ROLES = {OWNER: ingest_pb2.ROLE_OWNER, VIEWER: ingest_pb2.ROLE_VIEWER}


class StandInIngest(ingest_pb2_grpc.IngestServiceServicer, ingest_pb2_grpc.IngestInternalServiceServicer):
    async def GetProjectRole(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        role = ROLES.get(caller(context)) if request.project == PROJECT else None
        if role is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.project} not found")
        return ingest_pb2.GetProjectRoleResponse(role=role, user=f"users/{caller(context)}")

    async def StreamRows(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        table = ROWS.select(list(request.columns)) if request.columns else ROWS
        step = request.batch_rows or 50
        for start in range(0, table.num_rows, step):
            part = table.slice(start, step)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, part.schema) as writer:
                writer.write_table(part)
            yield ingest_pb2.StreamRowsResponse(
                start_row=start, row_count=part.num_rows, arrow_ipc=sink.getvalue().to_pybytes()
            )

    async def ListRows(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        hits = [i for i, t in enumerate(TEXTS) if request.filter.lower() in t.lower()]
        return ingest_pb2.ListRowsResponse(
            columns=["text"],
            rows=[ingest_pb2.Row(index=i, values=[_value(TEXTS[i])]) for i in hits],
            total_size=len(hits),
        )


def _value(text: str) -> Any:
    from google.protobuf import struct_pb2

    return struct_pb2.Value(string_value=text)


class StandInEmbedding(
    embedding_pb2_grpc.EmbeddingServiceServicer, embedding_pb2_grpc.EmbeddingInternalServiceServicer
):
    embeddings = {
        EMBEDDING: (VECTORS, job_pb2.JOB_STATE_SUCCEEDED),
        RUNNING_EMBEDDING: (VECTORS, job_pb2.JOB_STATE_RUNNING),
        TINY_EMBEDDING: (VECTORS[:10], job_pb2.JOB_STATE_SUCCEEDED),
    }

    async def GetEmbedding(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if caller(context) not in ROLES or request.name not in self.embeddings:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        vectors, state = self.embeddings[request.name]
        return embedding_pb2.Embedding(
            name=request.name, model="models/stand-in", text_columns=["text"], dimension=DIM,
            row_count=len(vectors), job=job_pb2.Job(state=state),
        )

    async def StreamVectors(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        vectors, _ = self.embeddings[request.embedding]
        for start in reversed(range(0, len(vectors), 32)):  # out of order: start_row says where
            block = vectors[start : start + 32]
            yield embedding_pb2.StreamVectorsResponse(
                start_row=start, row_count=len(block), dimension=DIM, vectors=block.astype("<f4").tobytes()
            )

    async def EmbedTexts(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # each text lands on the centre of the topic whose words it holds (0 for none)
        topics = [next((i for i, words in enumerate(TOPICS) if any(w in t for w in words)), 0) for t in request.texts]
        return embedding_pb2.EmbedTextsResponse(dimension=DIM, vectors=CENTRES[topics].astype("<f4").tobytes())


class StandInAuth(auth_pb2_grpc.AuthInternalServiceServicer):
    async def IssueDelegatedToken(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        expires = Timestamp()
        expires.FromSeconds(int(time.time()) + 900)
        return auth_pb2.IssueDelegatedTokenResponse(
            access_token=token(request.user.removeprefix("users/"), "embedviz-internal"),
            access_token_expire_time=expires,
        )


async def _keys(kid: str) -> jwt.PyJWK | None:
    return PUBLIC_JWK if kid == KID else None


@pytest_asyncio.fixture(scope="module")
async def projections(
    infra: Stack, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[projection_pb2_grpc.ProjectionServiceStub]:
    others = grpc.aio.server()
    ingest, embedding = StandInIngest(), StandInEmbedding()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(ingest, others)
    ingest_pb2_grpc.add_IngestInternalServiceServicer_to_server(ingest, others)
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(embedding, others)
    embedding_pb2_grpc.add_EmbeddingInternalServiceServicer_to_server(embedding, others)
    auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(StandInAuth(), others)
    others_port = others.add_insecure_port("127.0.0.1:0")
    await others.start()
    address = f"127.0.0.1:{others_port}"
    settings = dataclasses.replace(
        Settings.from_env(),
        database_url=infra.database_url,
        nats_url=infra.nats_url,
        blob_root=str(tmp_path_factory.mktemp("blobs")),
        ingest_addr=address,
        auth_addr=address,
        embedding_addr=address,
        internal_secret="test-secret",
        workers=1,
    )
    deps = await open_deps("projection", settings, "projection", MIGRATIONS, keys=_keys)
    built = await build(deps)
    port = built.server.add_insecure_port("127.0.0.1:0")
    await built.server.start()
    stop = asyncio.Event()
    workers = [asyncio.create_task(job(stop)) for job in built.background]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield projection_pb2_grpc.ProjectionServiceStub(channel)
    finally:
        stop.set()
        await asyncio.wait(workers, timeout=60)
        await channel.close()
        await built.server.stop(1)
        await close_deps(deps)
        await others.stop(1)


async def expect_error(call: Any, code: grpc.StatusCode, text: str = "") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or ""), info.value.details()


def create(
    stub: projection_pb2_grpc.ProjectionServiceStub, parent: str = EMBEDDING, user: str = OWNER, **spec: Any
) -> Any:
    return stub.CreateProjection(
        projection_pb2.CreateProjectionRequest(parent=parent, projection=projection_pb2.Projection(**spec)),
        metadata=auth(user),
    )


async def finished(stub: projection_pb2_grpc.ProjectionServiceStub, name: str) -> projection_pb2.Projection:
    last = None
    async for update in stub.WatchProjection(
        projection_pb2.WatchProjectionRequest(name=name), metadata=auth(VIEWER), timeout=180
    ):
        last = update.projection
    assert last is not None
    return last


async def test_create_refuses_what_cannot_be_projected(projections: projection_pb2_grpc.ProjectionServiceStub) -> None:
    await expect_error(create(projections, dimensions=4), grpc.StatusCode.INVALID_ARGUMENT, "dimensions is 4")
    await expect_error(
        create(projections, TINY_EMBEDDING, umap=projection_pb2.UmapParams(n_neighbors=15)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "n_neighbors is 15 but the embedding has 10 rows; use at most 9",
    )
    await expect_error(create(projections, RUNNING_EMBEDDING), grpc.StatusCode.FAILED_PRECONDITION, "running")
    await expect_error(create(projections, f"{DATASET}/embeddings/none"), grpc.StatusCode.NOT_FOUND)
    await expect_error(create(projections, user=VIEWER), grpc.StatusCode.PERMISSION_DENIED)
    await expect_error(create(projections, user=STRANGER), grpc.StatusCode.NOT_FOUND)
    await expect_error(create(projections, "projects/p1/nonsense"), grpc.StatusCode.INVALID_ARGUMENT)


async def test_a_projection_makes_points_clusters_and_labels(
    projections: projection_pb2_grpc.ProjectionServiceStub,
) -> None:
    created = await create(
        projections,
        method=projection_pb2.PROJECTION_METHOD_PCA,
        seed=3,
        clustering=projection_pb2.ClusterParams(k=3),
    )
    assert created.name.startswith(f"{EMBEDDING}/projections/")
    assert created.job.state == job_pb2.JOB_STATE_PENDING

    done = await finished(projections, created.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.point_count, done.cluster_count, done.dimensions) == (len(TEXTS), 3, 2)

    rows, coords, clusters = [], [], []
    async for chunk in projections.StreamPoints(
        projection_pb2.StreamPointsRequest(name=created.name, chunk_points=50), metadata=auth(VIEWER)
    ):
        assert chunk.total_count == len(TEXTS) and chunk.dimensions == 2
        rows.append(np.frombuffer(chunk.row_indexes, "<u4"))
        coords.append(np.frombuffer(chunk.coordinates, "<f4").reshape(chunk.count, 2))
        clusters.append(np.frombuffer(chunk.cluster_ids, "<i4"))
    assert [len(r) for r in rows] == [50, 50, 20]
    np.testing.assert_array_equal(np.concatenate(rows), np.arange(len(TEXTS)))
    labels = np.concatenate(clusters)
    for topic in range(3):  # each topic is one cluster
        assert len(set(labels[TRUTH == topic].tolist())) == 1

    listed = await projections.ListClusters(
        projection_pb2.ListClustersRequest(parent=created.name), metadata=auth(VIEWER)
    )
    assert sorted(c.size for c in listed.clusters) == [PER_TOPIC] * 3
    assert done.cluster_levels == 1  # three clusters: nothing to merge
    assert done.quality.cluster_agreement == -1  # no label column to agree with
    for cluster in listed.clusters:
        topic = int(TRUTH[labels == cluster.id][0])
        assert {w for t in cluster.terms[:3] for w in t.split()} <= set(TOPICS[topic]), cluster.terms
        assert cluster.label == label_from(cluster.terms, cluster.id)
        assert len(cluster.centroid) == 2 and (cluster.level, cluster.parent_id) == (0, -1)

    found = await projections.SearchPoints(
        projection_pb2.SearchPointsRequest(name=created.name, query="guitar", limit=5), metadata=auth(VIEWER)
    )
    assert len(found.matches) == 5 and all(TRUTH[m.row_index] == 2 for m in found.matches)
    substring = await projections.SearchPoints(
        projection_pb2.SearchPointsRequest(name=created.name, query="orchard", column="text", limit=1000),
        metadata=auth(VIEWER),
    )
    assert {m.row_index for m in substring.matches} == {i for i, t in enumerate(TEXTS) if "orchard" in t}
    scores = [m.score for m in substring.matches]  # ranked: best first, each in (0, 1]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores) and len(set(scores)) > 1

    near = await projections.FindNeighbors(
        projection_pb2.FindNeighborsRequest(name=created.name, row_index=45, limit=7), metadata=auth(VIEWER)
    )
    assert len(near.neighbors) == 7 and 45 not in [n.row_index for n in near.neighbors]
    assert all(TRUTH[n.row_index] == TRUTH[45] for n in near.neighbors)
    await expect_error(
        projections.FindNeighbors(
            projection_pb2.FindNeighborsRequest(name=created.name, row_index=len(TEXTS)), metadata=auth(VIEWER)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "row_index is 120",
    )

    csv = b""
    async for part in projections.ExportProjection(
        projection_pb2.ExportProjectionRequest(name=created.name), metadata=auth(VIEWER)
    ):
        assert part.content_type == "text/csv"
        csv += part.data
    lines = csv.decode().splitlines()
    assert lines[0] == "row,x,y,cluster,label" and len(lines) == len(TEXTS) + 1

    # others' eyes and hands
    await expect_error(
        projections.GetProjection(projection_pb2.GetProjectionRequest(name=created.name), metadata=auth(STRANGER)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        projections.DeleteProjection(projection_pb2.DeleteProjectionRequest(name=created.name), metadata=auth(VIEWER)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await projections.DeleteProjection(projection_pb2.DeleteProjectionRequest(name=created.name), metadata=auth(OWNER))
    await expect_error(
        projections.GetProjection(projection_pb2.GetProjectionRequest(name=created.name), metadata=auth(OWNER)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_clusters_come_in_levels_merged_by_meaning_with_labels_of_their_own(
    projections: projection_pb2_grpc.ProjectionServiceStub,
) -> None:
    # six k-means clusters of three topics: the level above merges them back into the topics
    created = await create(
        projections, method=projection_pb2.PROJECTION_METHOD_PCA, seed=5, clustering=projection_pb2.ClusterParams(k=6)
    )
    done = await finished(projections, created.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.cluster_count, done.cluster_levels) == (6, 3)
    tree = (
        await projections.ListClusters(
            projection_pb2.ListClustersRequest(parent=created.name, all_levels=True), metadata=auth(VIEWER)
        )
    ).clusters
    by_id = {c.id: c for c in tree}
    assert len(by_id) == len(tree)  # ids are unique across levels
    levels = [[c for c in tree if c.level == level] for level in range(3)]
    assert [len(level) for level in levels] == [6, 3, 2]
    assert [c.level for c in tree] == sorted(c.level for c in tree)  # finest first
    points = np.concatenate([
        np.frombuffer(chunk.cluster_ids, "<i4")
        async for chunk in projections.StreamPoints(
            projection_pb2.StreamPointsRequest(name=created.name), metadata=auth(VIEWER)
        )
    ])
    # the middle level is the three topics; sizes add up through the parents
    for middle in levels[1]:
        children = [c for c in levels[0] if c.parent_id == middle.id]
        assert children and middle.size == sum(c.size for c in children) == PER_TOPIC
        rows = np.isin(points, [c.id for c in children])
        assert len(set(TRUTH[rows].tolist())) == 1
        assert by_id[middle.parent_id].level == 2
        for child in children:  # a finer label does not just repeat its parent's
            assert child.label != middle.label
    assert all(c.parent_id == -1 for c in levels[2])
    assert sum(c.size for c in levels[2]) == len(TEXTS)
    only_middle = await projections.ListClusters(
        projection_pb2.ListClustersRequest(parent=created.name, level=1), metadata=auth(VIEWER)
    )
    assert sorted(c.id for c in only_middle.clusters) == sorted(c.id for c in levels[1])
    await expect_error(
        projections.ListClusters(
            projection_pb2.ListClustersRequest(parent=created.name, level=3), metadata=auth(VIEWER)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "level is 3",
    )
    await expect_error(
        projections.ListClusters(projection_pb2.ListClustersRequest(parent=created.name), metadata=auth(STRANGER)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_umap_3d_with_hdbscan_and_paging(projections: projection_pb2_grpc.ProjectionServiceStub) -> None:
    created = await create(
        projections,
        dimensions=3,
        seed=1,
        umap=projection_pb2.UmapParams(n_neighbors=10),
        clustering=projection_pb2.ClusterParams(
            algorithm=projection_pb2.CLUSTER_ALGORITHM_HDBSCAN, min_cluster_size=10
        ),
    )
    done = await finished(projections, created.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert done.dimensions == 3 and done.cluster_count >= 2

    second = await create(projections, method=projection_pb2.PROJECTION_METHOD_PCA)
    page = await projections.ListProjections(
        projection_pb2.ListProjectionsRequest(parent=EMBEDDING, page_size=1), metadata=auth(VIEWER)
    )
    assert len(page.projections) == 1 and page.next_page_token
    rest = await projections.ListProjections(
        projection_pb2.ListProjectionsRequest(parent=EMBEDDING, page_size=100, page_token=page.next_page_token),
        metadata=auth(VIEWER),
    )
    names = {p.name for p in [*page.projections, *rest.projections]}
    assert {created.name, second.name} <= names
    await finished(projections, second.name)


async def test_cancelling_a_projection_stops_it(projections: projection_pb2_grpc.ProjectionServiceStub) -> None:
    created = await create(projections, method=projection_pb2.PROJECTION_METHOD_TSNE)
    cancelled = await projections.CancelProjection(
        projection_pb2.CancelProjectionRequest(name=created.name), metadata=auth(OWNER)
    )
    assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
    done = await finished(projections, created.name)
    assert done.job.state == job_pb2.JOB_STATE_CANCELLED
    await expect_error(
        projections.StreamPoints(projection_pb2.StreamPointsRequest(name=created.name), metadata=auth(VIEWER)).read(),
        grpc.StatusCode.FAILED_PRECONDITION,
        "cancelled",
    )
