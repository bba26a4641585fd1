"""Project when done, through the whole system: an embedding created with
project_when_done gets its default projection (UMAP 2-D, HDBSCAN) without anyone asking
the projection service, made on behalf of the embedding's creator."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from embedviz.v1 import auth_pb2, embedding_pb2, ingest_pb2, job_pb2, projection_pb2
from services.stack import Stack
from tests.support.texts import csv_bytes, rows
from tests.support.web import EdgeClient

pytestmark = pytest.mark.slow


async def test_an_embedding_with_project_when_done_gets_its_default_projection(stack: Stack) -> None:
    data = csv_bytes(rows(80))
    async with aiohttp.ClientSession() as session:
        edge = EdgeClient(session, stack.edge_url)
        signed = await edge.unary(
            "/embedviz.v1.AuthService/SignUp",
            auth_pb2.SignUpRequest(
                email=f"follow-{uuid.uuid4().hex[:8]}@example.org", password="correct horse battery"
            ),
            auth_pb2.SignUpResponse,
        )
        logged = await edge.unary(
            "/embedviz.v1.AuthService/Login",
            auth_pb2.LoginRequest(email=signed.user.email, password="correct horse battery"),
            auth_pb2.LoginResponse,
        )
        edge.token = logged.session.access_token
        project = await edge.unary(
            "/embedviz.v1.IngestService/CreateProject",
            ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name="follow-up")),
            ingest_pb2.Project,
        )
        upload = await edge.unary(
            "/embedviz.v1.IngestService/CreateUpload",
            ingest_pb2.CreateUploadRequest(
                parent=project.name, upload=ingest_pb2.Upload(filename="t.csv", size_bytes=len(data))
            ),
            ingest_pb2.Upload,
        )
        await edge.unary(
            "/embedviz.v1.IngestService/AppendUploadChunk",
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=data),
            ingest_pb2.AppendUploadChunkResponse,
        )
        dataset = await edge.unary(
            "/embedviz.v1.IngestService/FinishUpload",
            ingest_pb2.FinishUploadRequest(name=upload.name),
            ingest_pb2.Dataset,
        )
        watched = await edge.stream(
            "/embedviz.v1.IngestService/WatchDataset",
            ingest_pb2.WatchDatasetRequest(name=dataset.name),
            ingest_pb2.WatchDatasetResponse,
        )
        assert watched[-1].dataset.job.state == job_pb2.JOB_STATE_SUCCEEDED
        embedding = await edge.unary(
            "/embedviz.v1.EmbeddingService/CreateEmbedding",
            embedding_pb2.CreateEmbeddingRequest(
                parent=dataset.name, embedding=embedding_pb2.Embedding(text_columns=["text"], project_when_done=True)
            ),
            embedding_pb2.Embedding,
        )
        assert embedding.creator == signed.user.name
        updates = await edge.stream(
            "/embedviz.v1.EmbeddingService/WatchEmbedding",
            embedding_pb2.WatchEmbeddingRequest(name=embedding.name),
            embedding_pb2.WatchEmbeddingResponse,
        )
        assert updates[-1].embedding.job.state == job_pb2.JOB_STATE_SUCCEEDED

        listed: list[projection_pb2.Projection] = []
        for _ in range(150):
            response = await edge.unary(
                "/embedviz.v1.ProjectionService/ListProjections",
                projection_pb2.ListProjectionsRequest(parent=embedding.name),
                projection_pb2.ListProjectionsResponse,
            )
            listed = list(response.projections)
            if listed:
                break
            await asyncio.sleep(0.2)
        assert len(listed) == 1, "no follow-up projection appeared"
        made = await edge.stream(
            "/embedviz.v1.ProjectionService/WatchProjection",
            projection_pb2.WatchProjectionRequest(name=listed[0].name),
            projection_pb2.WatchProjectionResponse,
        )
    done = made[-1].projection
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert (done.method, done.dimensions) == (projection_pb2.PROJECTION_METHOD_UMAP, 2)
    assert done.clustering.algorithm == projection_pb2.CLUSTER_ALGORITHM_HDBSCAN
    assert done.point_count == 80
