"""The whole path through the edge, as the browser walks it: sign up, create a project,
upload a CSV in chunks, embed it, watch progress to completion, project it, stream the
points. Every row gets a point, and rows with nearly the same text land together."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from embedviz.v1 import auth_pb2, embedding_pb2, ingest_pb2, job_pb2, projection_pb2
from services.stack import Stack
from tests.support.texts import NEAR_DUPLICATES, csv_bytes, rows
from tests.support.web import EdgeClient

ROWS = 1000
CHUNK = 64 * 1024
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.slow


def decode_points(chunks: list[projection_pb2.StreamPointsResponse]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows_ = np.concatenate([np.frombuffer(c.row_indexes, dtype="<u4") for c in chunks])
    dims = chunks[0].dimensions
    coords = np.concatenate([np.frombuffer(c.coordinates, dtype="<f4").reshape(-1, dims) for c in chunks])
    clusters = np.concatenate([np.frombuffer(c.cluster_ids, dtype="<i4") for c in chunks])
    return rows_, coords, clusters


def assert_progress_is_monotonic(jobs: list[job_pb2.Job]) -> None:
    done = [j.done for j in jobs]
    assert done == sorted(done), f"progress went backwards: {done}"
    assert jobs[-1].state == job_pb2.JOB_STATE_SUCCEEDED, jobs[-1].error


async def test_sign_up_upload_embed_project_and_see_the_map(stack: Stack) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    table = rows(ROWS)
    data = csv_bytes(table)
    async with aiohttp.ClientSession() as session:
        edge = EdgeClient(session, stack.edge_url)
        signed = await edge.unary(
            "/embedviz.v1.AuthService/SignUp",
            auth_pb2.SignUpRequest(email=f"walk-{uuid.uuid4().hex[:8]}@example.org", password="correct horse battery"),
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
            ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name="walkthrough")),
            ingest_pb2.Project,
        )
        assert project.role == ingest_pb2.ROLE_OWNER

        t0 = time.monotonic()
        upload = await edge.unary(
            "/embedviz.v1.IngestService/CreateUpload",
            ingest_pb2.CreateUploadRequest(
                parent=project.name, upload=ingest_pb2.Upload(filename="notes.csv", size_bytes=len(data))
            ),
            ingest_pb2.Upload,
        )
        for offset in range(0, len(data), CHUNK):
            appended = await edge.unary(
                "/embedviz.v1.IngestService/AppendUploadChunk",
                ingest_pb2.AppendUploadChunkRequest(
                    name=upload.name, offset=offset, data=data[offset : offset + CHUNK]
                ),
                ingest_pb2.AppendUploadChunkResponse,
            )
        assert appended.received_bytes == len(data)
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
        dataset = watched[-1].dataset
        assert dataset.job.state == job_pb2.JOB_STATE_SUCCEEDED, dataset.job.error
        assert dataset.row_count == ROWS
        assert [c.name for c in dataset.columns] == ["id", "title", "text", "topic"]
        timings["import_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        embedding = await edge.unary(
            "/embedviz.v1.EmbeddingService/CreateEmbedding",
            embedding_pb2.CreateEmbeddingRequest(
                parent=dataset.name, embedding=embedding_pb2.Embedding(text_columns=["text"])
            ),
            embedding_pb2.Embedding,
        )
        updates = await edge.stream(
            "/embedviz.v1.EmbeddingService/WatchEmbedding",
            embedding_pb2.WatchEmbeddingRequest(name=embedding.name),
            embedding_pb2.WatchEmbeddingResponse,
        )
        assert_progress_is_monotonic([u.embedding.job for u in updates])
        embedding = updates[-1].embedding
        assert embedding.row_count == ROWS and embedding.dimension == 384
        timings["embed_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        projection = await edge.unary(
            "/embedviz.v1.ProjectionService/CreateProjection",
            projection_pb2.CreateProjectionRequest(
                parent=embedding.name,
                projection=projection_pb2.Projection(
                    method=projection_pb2.PROJECTION_METHOD_UMAP,
                    dimensions=2,
                    seed=42,
                    clustering=projection_pb2.ClusterParams(algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS, k=5),
                ),
            ),
            projection_pb2.Projection,
        )
        updates_p = await edge.stream(
            "/embedviz.v1.ProjectionService/WatchProjection",
            projection_pb2.WatchProjectionRequest(name=projection.name),
            projection_pb2.WatchProjectionResponse,
        )
        assert updates_p[-1].projection.job.state == job_pb2.JOB_STATE_SUCCEEDED, updates_p[-1].projection.job.error
        timings["project_s"] = time.monotonic() - t0

        chunks = await edge.stream(
            "/embedviz.v1.ProjectionService/StreamPoints",
            projection_pb2.StreamPointsRequest(name=projection.name, chunk_points=300),
            projection_pb2.StreamPointsResponse,
        )
        timings["whole_path_s"] = time.monotonic() - started

    assert len(chunks) == 4  # 1000 points in chunks of 300
    row_index, coords, clusters = decode_points(chunks)
    assert chunks[0].total_count == ROWS
    assert sorted(row_index.tolist()) == list(range(ROWS))
    assert set(np.unique(clusters).tolist()) == set(range(5))

    by_row = np.empty_like(coords)
    by_row[row_index] = coords
    sample = by_row[np.random.default_rng(0).choice(ROWS, 400, replace=False)]
    pairwise = np.linalg.norm(sample[:, None, :] - sample[None, :, :], axis=-1)
    close = np.percentile(pairwise[np.triu_indices(len(sample), 1)], 5)
    for pair in range(len(NEAR_DUPLICATES)):
        a, b = by_row[2 * pair], by_row[2 * pair + 1]
        assert np.linalg.norm(a - b) < close, f"near-duplicate pair {pair} landed far apart"

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "whole_path.json").write_text(json.dumps({"rows": ROWS, **timings}, indent=2))
    print(f"whole path for {ROWS} rows: " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
