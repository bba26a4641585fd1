"""Deleting is whole: a deleted dataset takes its embeddings and their projections with
it (ingest -> events.dataset-deleted -> embedding -> events.embedding-deleted ->
projection), and a deleted embedding takes its projections; every blob goes too."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from embedviz.v1 import embedding_pb2, ingest_pb2, projection_pb2
from services.stack import Stack
from tests.support.world import Stubs, eventually


@pytest.fixture
async def stubs(stack: Stack):  # type: ignore[no-untyped-def]
    made = Stubs(stack)
    yield made
    await made.close()


def blob_dirs(stack: Stack, kind: str, name: str) -> Path:
    return Path(stack.blob_root) / kind / name.rsplit("/", 1)[1]


async def gone(call) -> None:  # type: ignore[no-untyped-def]
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
    else:
        raise AssertionError("still there")


async def test_deleting_a_dataset_removes_its_embeddings_and_projections(stack: Stack, stubs: Stubs) -> None:
    owner = await stubs.sign_up("cascade")
    project = await stubs.make_project(owner)
    dataset = await stubs.make_dataset(owner, project, n_rows=60)
    embedding = await stubs.make_embedding(owner, dataset)
    projection = await stubs.make_projection(owner, embedding)
    assert blob_dirs(stack, "embeddings", embedding).exists()
    assert blob_dirs(stack, "projections", projection).exists()

    await stubs.ingest.DeleteDataset(ingest_pb2.DeleteDatasetRequest(name=dataset), metadata=owner.md)

    async def everything_is_gone() -> None:
        await gone(stubs.embedding.GetEmbedding(embedding_pb2.GetEmbeddingRequest(name=embedding), metadata=owner.md))
        await gone(
            stubs.projection.GetProjection(projection_pb2.GetProjectionRequest(name=projection), metadata=owner.md)
        )
        assert not blob_dirs(stack, "datasets", dataset).exists()
        assert not blob_dirs(stack, "embeddings", embedding).exists()
        assert not blob_dirs(stack, "projections", projection).exists()

    await eventually(everything_is_gone)


async def test_deleting_an_embedding_removes_its_projections(stack: Stack, stubs: Stubs) -> None:
    owner = await stubs.sign_up("cascade")
    project = await stubs.make_project(owner)
    dataset = await stubs.make_dataset(owner, project, n_rows=60)
    embedding = await stubs.make_embedding(owner, dataset)
    projection = await stubs.make_projection(owner, embedding)

    await stubs.embedding.DeleteEmbedding(embedding_pb2.DeleteEmbeddingRequest(name=embedding), metadata=owner.md)

    async def projection_is_gone() -> None:
        await gone(
            stubs.projection.GetProjection(projection_pb2.GetProjectionRequest(name=projection), metadata=owner.md)
        )
        assert not blob_dirs(stack, "projections", projection).exists()

    await eventually(projection_is_gone)
    kept = await stubs.ingest.GetDataset(ingest_pb2.GetDatasetRequest(name=dataset), metadata=owner.md)
    assert kept.name == dataset
