"""Bring your own vectors, across the real services: a dataset whose rows already hold
vectors (a Parquet list<float> column, N numeric CSV columns, a JSON array in JSON Lines)
becomes an embedding without a model, with the file's vectors exactly, and then a map;
rows without a vector of the right length are reported by number, and a text query
(search by meaning) is refused while neighbours work."""

from __future__ import annotations

import io
import json

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedviz.v1 import embedding_pb2, job_pb2, projection_pb2
from services.stack import Stack
from tests.support.world import Person, Stubs

pytestmark = pytest.mark.slow

GROUPS = ("birds", "ships", "coins")


@pytest.fixture
async def stubs(stack: Stack):  # type: ignore[no-untyped-def]
    made = Stubs(stack)
    yield made
    await made.close()


def grouped_vectors(n: int, dimension: int, seed: int = 3) -> tuple[np.ndarray, list[str]]:
    """n vectors around three far-apart centres, and each one's group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(GROUPS), dimension)) * 6
    groups = [GROUPS[i % len(GROUPS)] for i in range(n)]
    vectors = np.stack([centres[GROUPS.index(g)] for g in groups]) + rng.normal(size=(n, dimension))
    return vectors.astype(np.float32), groups


async def embed(stubs: Stubs, who: Person, dataset: str, **fields: object) -> embedding_pb2.Embedding:
    made = await stubs.embedding.CreateEmbedding(
        embedding_pb2.CreateEmbeddingRequest(parent=dataset, embedding=embedding_pb2.Embedding(**fields)),  # type: ignore[arg-type]
        metadata=who.md,
    )
    return await stubs.watch_embedding(who, made.name, timeout=120) or made


async def stored_vectors(stubs: Stubs, who: Person, name: str) -> np.ndarray:
    chunks = [
        c
        async for c in stubs.embedding_internal.StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=name), metadata=who.md
        )
    ]
    return np.concatenate([np.frombuffer(c.vectors, dtype="<f4").reshape(c.row_count, c.dimension) for c in chunks])


async def make_map(stubs: Stubs, who: Person, embedding: str) -> projection_pb2.Projection:
    made = await stubs.projection.CreateProjection(
        projection_pb2.CreateProjectionRequest(
            parent=embedding,
            projection=projection_pb2.Projection(
                method=projection_pb2.PROJECTION_METHOD_PCA,
                dimensions=2,
                seed=1,
                label_column="group",
                clustering=projection_pb2.ClusterParams(
                    algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS, k=3, space=projection_pb2.CLUSTER_SPACE_PROJECTED
                ),
            ),
        ),
        metadata=who.md,
    )
    return await stubs.watch_projection(who, made.name) or made


async def test_a_parquet_vector_column_becomes_an_embedding_and_a_map(stubs: Stubs) -> None:
    owner = await stubs.sign_up("byo")
    project = await stubs.make_project(owner, "own vectors")
    vectors, groups = grouped_vectors(240, 16)
    table = pa.table(
        {
            "title": [f"{g} note {i}" for i, g in enumerate(groups)],
            "group": groups,
            "vec": pa.array(list(vectors), type=pa.list_(pa.float32())),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    dataset = await stubs.upload(owner, project, sink.getvalue(), "vectors.parquet")

    embedding = await embed(stubs, owner, dataset, vector_columns=["vec"], text_columns=["title"])
    assert embedding.job.state == job_pb2.JOB_STATE_SUCCEEDED, embedding.job.error
    assert embedding.model == "imported" and embedding.dimension == 16 and embedding.row_count == 240
    assert list(embedding.vector_columns) == ["vec"]
    # the file's numbers, row for row: no model touched them
    np.testing.assert_array_equal(await stored_vectors(stubs, owner, embedding.name), vectors)

    projection = await make_map(stubs, owner, embedding.name)
    assert projection.job.state == job_pb2.JOB_STATE_SUCCEEDED, projection.job.error
    assert projection.point_count == 240
    # the map is made of these vectors: neighbours share their group
    assert projection.quality.label_agreement > 0.95, projection.quality

    neighbours = await stubs.projection.FindNeighbors(
        projection_pb2.FindNeighborsRequest(name=projection.name, row_index=0, limit=5), metadata=owner.md
    )
    assert len(neighbours.neighbors) == 5
    assert all(groups[int(n.row_index)] == groups[0] for n in neighbours.neighbors)
    # no model can turn a query into such a vector: a clear refusal, not an error
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stubs.projection.SearchPoints(
            projection_pb2.SearchPointsRequest(name=projection.name, query="a bird"), metadata=owner.md
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "imported" in (refused.value.details() or "") and "neighbours" in (refused.value.details() or "")
    # a search in a column's text still works
    found = await stubs.projection.SearchPoints(
        projection_pb2.SearchPointsRequest(name=projection.name, query="ships", column="title"), metadata=owner.md
    )
    assert found.matches and all(groups[int(m.row_index)] == "ships" for m in found.matches)


async def test_numeric_csv_columns_become_the_vectors(stubs: Stubs) -> None:
    owner = await stubs.sign_up("byo-csv")
    project = await stubs.make_project(owner, "own numbers")
    vectors, groups = grouped_vectors(150, 6, seed=5)
    names = [f"x{j}" for j in range(6)]
    lines = ["name,group," + ",".join(names)]
    for i, (g, vec) in enumerate(zip(groups, vectors, strict=True)):
        lines.append(f"row {i},{g}," + ",".join(f"{v:.6f}" for v in vec))
    dataset = await stubs.upload(owner, project, ("\n".join(lines) + "\n").encode(), "numbers.csv")

    embedding = await embed(stubs, owner, dataset, vector_columns=names)
    assert embedding.job.state == job_pb2.JOB_STATE_SUCCEEDED, embedding.job.error
    assert embedding.dimension == 6 and embedding.row_count == 150
    np.testing.assert_allclose(await stored_vectors(stubs, owner, embedding.name), vectors, atol=1e-5)
    projection = await make_map(stubs, owner, embedding.name)
    assert projection.job.state == job_pb2.JOB_STATE_SUCCEEDED, projection.job.error
    assert projection.point_count == 150 and projection.quality.label_agreement > 0.95


async def test_rows_without_a_vector_of_the_right_length_are_reported_by_number(stubs: Stubs) -> None:
    owner = await stubs.sign_up("byo-bad")
    project = await stubs.make_project(owner, "bad vectors")
    vectors, groups = grouped_vectors(40, 4, seed=7)
    lines = []
    for i, (g, vec) in enumerate(zip(groups, vectors, strict=True)):
        row: dict[str, object] = {"group": g, "vec": [round(float(v), 5) for v in vec]}
        if i == 4:
            row["vec"] = [1.0, 2.0, 3.0]  # the 5th row: one number short
        if i == 8:
            row["vec"] = None  # the 9th: none at all
        lines.append(json.dumps(row))
    dataset = await stubs.upload(owner, project, ("\n".join(lines) + "\n").encode(), "vectors.jsonl")

    embedding = await embed(stubs, owner, dataset, vector_columns=["vec"])
    assert embedding.job.state == job_pb2.JOB_STATE_FAILED
    assert "2 rows have no usable vector of 4 numbers" in embedding.job.error, embedding.job.error
    assert "row 5: 3 numbers" in embedding.job.error and "row 9: no vector" in embedding.job.error

    # what cannot hold vectors is refused when the embedding is asked for, naming the column
    for fields, words in (
        ({"vector_columns": ["group"]}, "column 'group' holds string, not numbers"),
        ({"vector_columns": ["nowhere"]}, "column 'nowhere' not found"),
        ({"vector_columns": ["vec"], "model": "all-minilm-l6-v2"}, "not both"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stubs.embedding.CreateEmbedding(
                embedding_pb2.CreateEmbeddingRequest(parent=dataset, embedding=embedding_pb2.Embedding(**fields)),  # type: ignore[arg-type]
                metadata=owner.md,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (refused.value.details() or ""), refused.value.details()
