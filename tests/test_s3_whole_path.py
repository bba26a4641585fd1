"""The whole path with the blobs on S3: a stack whose services keep their blobs in a
SeaweedFS bucket (a real S3 server) takes an upload sent in chunks out of order, imports
it, embeds it and makes a map, and the user sees every row, every vector, every point and a
point's nearest neighbour; the objects are in the bucket, none in the data folder, and
deleting the dataset removes them.

A small stack (no edge, no web client), a few dozen rows and a PCA map: this runs in every
`make test`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from embedviz.v1 import embedding_pb2, ingest_pb2, job_pb2, projection_pb2
from services.stack import Stack
from tests.support.s3 import BUCKET, SeaweedFS, seaweedfs  # noqa: F401  (a fixture)
from tests.support.texts import csv_bytes, rows
from tests.support.world import Stubs, eventually

pytestmark = pytest.mark.slow

ROWS = 48
PREFIX = "embedviz"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "logs"


@pytest.fixture(scope="module")
def s3_stack(seaweedfs: SeaweedFS) -> Iterator[Stack]:  # noqa: F811
    root = Path(tempfile.mkdtemp(prefix="embedviz-s3-"))
    root.chmod(0o755)
    stack = Stack(
        root / "stack",
        components="postgres,nats,auth,ingest,embedding,projection",
        ports="free",
        environ={**os.environ, **seaweedfs.env(PREFIX)},
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        # as tests/conftest.py does for its stacks: the logs outlive the run, the data not
        logs = ARTIFACTS / "s3-stack"
        shutil.rmtree(logs, ignore_errors=True)
        if stack.logs_dir.exists():
            shutil.copytree(stack.logs_dir, logs)
            shutil.copy(seaweedfs.log_path, logs / "seaweedfs.log")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def stubs(s3_stack: Stack) -> AsyncIterator[Stubs]:
    s = Stubs(s3_stack)
    yield s
    await s.close()


def _keys(fs: pafs.S3FileSystem, under: str) -> list[str]:
    base = f"{BUCKET}/{PREFIX}/{under}"
    found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path.removeprefix(f"{BUCKET}/{PREFIX}/") for i in found if i.type == pafs.FileType.File)


@pytest.mark.timeout(300)
async def test_a_map_made_with_the_blobs_in_an_s3_bucket(
    s3_stack: Stack, stubs: Stubs, seaweedfs: SeaweedFS  # noqa: F811
) -> None:
    who = await stubs.sign_up("s3")
    project = await stubs.make_project(who, "on s3")
    table = rows(ROWS)
    data = csv_bytes(table)

    upload = await stubs.ingest.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project, upload=ingest_pb2.Upload(filename="notes.csv", size_bytes=len(data))
        ),
        metadata=who.md,
    )
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    pieces = [(cuts[i], data[cuts[i]:cuts[i + 1]]) for i in range(3)]
    # out of order, and the first chunk twice (a retry): S3 holds each as an object
    for offset, piece in (pieces[2], pieces[0], pieces[0], pieces[1]):
        await stubs.ingest.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=offset, data=piece), metadata=who.md
        )
    started = await stubs.ingest.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=who.md)
    last = None
    async for update in stubs.ingest.WatchDataset(
        ingest_pb2.WatchDatasetRequest(name=started.name), metadata=who.md, timeout=120
    ):
        last = update.dataset
    assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
    assert last.row_count == ROWS
    listed = await stubs.ingest.ListRows(
        ingest_pb2.ListRowsRequest(parent=started.name, page_size=100, columns=["text"]), metadata=who.md
    )
    assert [r.values[0].string_value for r in listed.rows] == [r["text"] for r in table]

    embedding = await stubs.make_embedding(who, started.name)
    stored = [
        c async for c in stubs.embedding_internal.StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=embedding), metadata=who.md
        )
    ]
    vectors = np.concatenate([np.frombuffer(c.vectors, dtype="<f4").reshape(c.row_count, c.dimension) for c in stored])
    assert vectors.shape == (ROWS, 384) and np.isfinite(vectors).all()
    projection = await stubs.make_projection(who, embedding)
    chunks = [
        c async for c in stubs.projection.StreamPoints(
            projection_pb2.StreamPointsRequest(name=projection), metadata=who.md, timeout=60
        )
    ]
    row_indexes = np.concatenate([np.frombuffer(c.row_indexes, dtype="<u4") for c in chunks])
    coordinates = np.concatenate([np.frombuffer(c.coordinates, dtype="<f4") for c in chunks]).reshape(-1, 2)
    assert chunks[0].total_count == ROWS
    assert sorted(row_indexes.tolist()) == list(range(ROWS))
    assert np.isfinite(coordinates).all() and np.ptp(coordinates, axis=0).min() > 0
    # rows 0 and 1 say the same thing in other punctuation (tests/support/texts.py)
    near = await stubs.projection.FindNeighbors(
        projection_pb2.FindNeighborsRequest(name=projection, row_index=0, limit=3), metadata=who.md
    )
    assert near.neighbors[0].row_index == 1

    dataset_id = started.name.rsplit("/", 1)[1]
    embedding_id = embedding.rsplit("/", 1)[1]
    projection_id = projection.rsplit("/", 1)[1]
    fs = seaweedfs.filesystem()
    assert f"datasets/{dataset_id}/rows.parquet" in _keys(fs, "datasets")
    assert f"embeddings/{embedding_id}/vectors.arrow" in _keys(fs, "embeddings")
    assert f"projections/{projection_id}/points.arrow" in _keys(fs, "projections")
    assert _keys(fs, "uploads") == []  # the chunks and the file joined from them went with the import
    assert not (s3_stack.data_dir / "blobs").exists()

    await stubs.ingest.DeleteDataset(ingest_pb2.DeleteDatasetRequest(name=started.name), metadata=who.md)
    assert _keys(fs, f"datasets/{dataset_id}") == []

    async def everything_went() -> None:
        assert _keys(fs, f"embeddings/{embedding_id}") == []
        assert _keys(fs, f"projections/{projection_id}") == []

    await eventually(everything_went, timeout=60)
