"""Append then extend, across the real services: rows appended to a dataset (ingest
AppendRows) are embedded by ExtendEmbedding alone, and the earlier vectors stay as they
were."""

from __future__ import annotations

import numpy as np
import pytest

from embedviz.v1 import embedding_pb2, ingest_pb2, job_pb2
from services.stack import Stack
from tests.support.texts import csv_bytes, rows
from tests.support.world import Stubs

pytestmark = pytest.mark.slow


@pytest.fixture
async def stubs(stack: Stack):  # type: ignore[no-untyped-def]
    made = Stubs(stack)
    yield made
    await made.close()


async def vectors(stubs: Stubs, who, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    chunks = [
        chunk
        async for chunk in stubs.embedding_internal.StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=name), metadata=who.md
        )
    ]
    starts = [c.start_row for c in chunks]
    assert starts == sorted(starts)
    return np.concatenate([np.frombuffer(c.vectors, dtype="<f4").reshape(c.row_count, c.dimension) for c in chunks])


async def test_appended_rows_are_embedded_by_extend_and_earlier_vectors_stay(stubs: Stubs) -> None:
    owner = await stubs.sign_up("extend")
    project = await stubs.make_project(owner)
    dataset = await stubs.make_dataset(owner, project, n_rows=60)
    embedding = await stubs.make_embedding(owner, dataset)
    before = await vectors(stubs, owner, embedding)
    assert before.shape == (60, 384)

    more = csv_bytes(rows(80, seed=99)[60:])  # 20 new rows, same columns
    upload = await stubs.ingest.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project, upload=ingest_pb2.Upload(filename="more.csv", size_bytes=len(more))
        ),
        metadata=owner.md,
    )
    await stubs.ingest.AppendUploadChunk(
        ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=more), metadata=owner.md
    )
    await stubs.ingest.AppendRows(ingest_pb2.AppendRowsRequest(dataset=dataset, upload=upload.name), metadata=owner.md)
    grown = None
    async for update in stubs.ingest.WatchDataset(
        ingest_pb2.WatchDatasetRequest(name=dataset), metadata=owner.md, timeout=120
    ):
        grown = update.dataset
    assert grown is not None and grown.job.state == job_pb2.JOB_STATE_SUCCEEDED and not grown.append_error
    assert grown.row_count == 80

    await stubs.embedding.ExtendEmbedding(embedding_pb2.ExtendEmbeddingRequest(name=embedding), metadata=owner.md)
    final = None
    async for update in stubs.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=embedding), metadata=owner.md, timeout=120
    ):
        final = update.embedding
    assert final is not None and final.job.state == job_pb2.JOB_STATE_SUCCEEDED, final
    assert final.row_count == 80

    after = await vectors(stubs, owner, embedding)
    assert after.shape == (80, 384)
    np.testing.assert_array_equal(after[:60], before)  # earlier rows untouched, not redone
    assert np.allclose(np.linalg.norm(after[60:], axis=1), 1.0, atol=1e-3)
