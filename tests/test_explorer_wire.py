"""What the explorer reads from the server, through the whole stack (real auth, ingest,
embedding and projection services, PostgreSQL, NATS): points packed 12 bytes a 2-D point,
dataset columns as Arrow for colour and size encodings, text search hits ranked best
first, and a map's progress that moves forward through its stages."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
import pytest_asyncio
from tqdm import tqdm

from embedviz.v1 import ingest_pb2, job_pb2, projection_pb2
from services.projection import maps, progress
from services.stack import Stack
from tests.support.texts import rows
from tests.support.world import Person, Stubs

ROWS = 200
# Texts that hold "lantern", best match first; written into the table in the reverse order,
# so that a ranking by row order would fail.
LANTERNS = [
    "Lantern",  # just the query
    "A lantern by the door",  # a whole word, early
    "We walked home late through the rain and carried a lantern",  # a whole word, late
    "Lanterns of the harbour festival",  # the start of a word
    "The sealanterns glowed",  # inside a word
]
LANTERN_ROWS = [ROWS - 1 - i for i in range(len(LANTERNS))]  # LANTERNS[i] is in row LANTERN_ROWS[i]


def table() -> list[dict[str, str]]:
    out = rows(ROWS)
    for text, at in zip(LANTERNS, LANTERN_ROWS, strict=True):
        out[at]["text"] = text
    for i, record in enumerate(out):
        record["size"] = str(i * 3 % 17)
    return out


def csv_data(records: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "title", "text", "topic", "size"])
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode()


@dataclass
class World:
    stubs: Stubs
    owner: Person
    viewer: Person
    outsider: Person
    records: list[dict[str, str]]
    dataset: str
    embedding: str


async def upload(stubs: Stubs, who: Person, project: str, data: bytes) -> str:
    made = await stubs.ingest.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project, upload=ingest_pb2.Upload(filename="wire.csv", size_bytes=len(data))
        ),
        metadata=who.md,
    )
    await stubs.ingest.AppendUploadChunk(
        ingest_pb2.AppendUploadChunkRequest(name=made.name, offset=0, data=data), metadata=who.md
    )
    dataset = await stubs.ingest.FinishUpload(ingest_pb2.FinishUploadRequest(name=made.name), metadata=who.md)
    last = None
    async for update in stubs.ingest.WatchDataset(
        ingest_pb2.WatchDatasetRequest(name=dataset.name), metadata=who.md, timeout=120
    ):
        last = update.dataset
    assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
    return dataset.name


@pytest_asyncio.fixture(scope="module")
async def world(stack: Stack) -> AsyncIterator[World]:
    stubs = Stubs(stack)
    try:
        owner, viewer, outsider = [await stubs.sign_up(label) for label in ("owner", "viewer", "outsider")]
        project = await stubs.make_project(owner, "explorer wire")
        await stubs.add_member(owner, project, viewer, ingest_pb2.ROLE_VIEWER)
        records = table()
        dataset = await upload(stubs, owner, project, csv_data(records))
        embedding = await stubs.make_embedding(owner, dataset)
        yield World(stubs, owner, viewer, outsider, records, dataset, embedding)
    finally:
        await stubs.close()


async def make_map(world: World) -> tuple[str, list[job_pb2.Job]]:
    """A PCA map with k-means, and every state of its job a watcher saw from its creation."""
    made = await world.stubs.projection.CreateProjection(
        projection_pb2.CreateProjectionRequest(
            parent=world.embedding,
            projection=projection_pb2.Projection(
                method=projection_pb2.PROJECTION_METHOD_PCA,
                seed=1,
                clustering=projection_pb2.ClusterParams(algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS, k=4),
            ),
        ),
        metadata=world.owner.md,
    )
    seen = []
    async for update in world.stubs.projection.WatchProjection(
        projection_pb2.WatchProjectionRequest(name=made.name), metadata=world.viewer.md, timeout=180
    ):
        seen.append(update.projection.job)
    assert seen[-1].state == job_pb2.JOB_STATE_SUCCEEDED, seen[-1].error
    return made.name, seen


@pytest_asyncio.fixture(scope="module")
async def mapped(world: World) -> tuple[str, list[job_pb2.Job]]:
    return await make_map(world)


async def points(
    world: World, name: str, encoding: projection_pb2.PointEncoding.ValueType
) -> list[projection_pb2.StreamPointsResponse]:
    return [
        chunk
        async for chunk in world.stubs.projection.StreamPoints(
            projection_pb2.StreamPointsRequest(name=name, chunk_points=64, encoding=encoding),
            metadata=world.viewer.md,
        )
    ]


async def test_packed_points_cost_12_bytes_each_and_equal_the_arrays(
    world: World, mapped: tuple[str, list[job_pb2.Job]]
) -> None:
    name, _ = mapped
    arrays = await points(world, name, projection_pb2.POINT_ENCODING_UNSPECIFIED)
    packed = await points(world, name, projection_pb2.POINT_ENCODING_PACKED)
    assert [c.count for c in packed] == [64, 64, 64, 8] == [c.count for c in arrays]
    assert [c.start for c in packed] == [0, 64, 128, 192] == [c.start for c in arrays]
    assert all(c.total_count == ROWS and c.dimensions == 2 for c in packed)
    assert all(not (c.row_indexes or c.coordinates or c.cluster_ids) for c in packed)
    assert sum(len(c.packed) for c in packed) / ROWS == 12

    rows_ = np.concatenate([np.frombuffer(c.row_indexes, "<u4") for c in arrays])
    coordinates = np.concatenate([np.frombuffer(c.coordinates, "<f4").reshape(c.count, 2) for c in arrays])
    clusters = np.concatenate([np.frombuffer(c.cluster_ids, "<i4") for c in arrays])
    # as a browser reads it: a Float32Array and a Uint16Array over the same records
    data = b"".join(c.packed for c in packed)
    floats = np.frombuffer(data, "<f4").reshape(ROWS, 3)
    shorts = np.frombuffer(data, "<u2").reshape(ROWS, 6)
    np.testing.assert_array_equal(rows_, np.arange(ROWS))
    np.testing.assert_array_equal(floats[:, :2], coordinates)
    np.testing.assert_array_equal(np.where(shorts[:, 4] == 0xFFFF, -1, shorts[:, 4]), clusters)
    assert (shorts[:, 5] == 0).all() and len(set(clusters.tolist())) == 4


def test_packed_noise_is_ffff_and_3d_records_take_16_bytes() -> None:
    cloud = maps.Points(
        rows=np.arange(3, dtype=np.uint32),
        coordinates=np.arange(9, dtype=np.float32).reshape(3, 3),
        clusters=np.array([-1, 0, 7], dtype=np.int32),
    )
    data = maps.pack_records(cloud, 1, 3)
    assert len(data) == 2 * 16
    back = maps.unpack_records(maps.pack_records(cloud, 0, 3), 3, 0)
    np.testing.assert_array_equal(back.coordinates, cloud.coordinates)
    np.testing.assert_array_equal(back.clusters, cloud.clusters)
    assert np.frombuffer(maps.pack_records(cloud, 0, 1), "<u2")[6] == 0xFFFF
    with pytest.raises(ValueError, match="does not fit"):
        maps.pack_records(maps.Points(cloud.rows, cloud.coordinates, np.array([0, 70000, 1], np.int32)), 0, 3)


async def read_columns(world: World, who: Person, columns: list[str], batch_rows: int = 0) -> list[Any]:
    return [
        message
        async for message in world.stubs.ingest.ReadColumns(
            ingest_pb2.ReadColumnsRequest(dataset=world.dataset, columns=columns, batch_rows=batch_rows),
            metadata=who.md,
        )
    ]


async def test_columns_come_as_arrow_in_row_order(world: World) -> None:
    messages = await read_columns(world, world.viewer, ["topic", "size", "text"], batch_rows=48)
    assert [m.start_row for m in messages] == [0, 48, 96, 144, 192]
    assert [m.row_count for m in messages] == [48, 48, 48, 48, 8]
    assert all(m.total_rows == ROWS for m in messages)
    batches = [pa.ipc.open_stream(m.arrow_ipc).read_all() for m in messages]
    assert all(b.column_names == ["topic", "size", "text"] for b in batches)
    whole = pa.concat_tables(batches)
    topic = whole.column("topic").combine_chunks()
    # a category: dictionary-encoded, one dictionary in every message, most frequent first
    assert pa.types.is_dictionary(topic.type)
    dictionaries = {tuple(b.column("topic").combine_chunks().dictionary.to_pylist()) for b in batches}
    assert len(dictionaries) == 1
    counts: dict[str, int] = {}
    for r in world.records:
        counts[r["topic"]] = counts.get(r["topic"], 0) + 1
    assert list(next(iter(dictionaries))) == sorted(counts, key=lambda v: (-counts[v], v))
    assert topic.cast(pa.string()).to_pylist() == [r["topic"] for r in world.records]
    assert whole.column("text").to_pylist() == [r["text"] for r in world.records]  # free text stays text
    assert not pa.types.is_dictionary(whole.schema.field("text").type)
    assert [str(v) for v in whole.column("size").to_pylist()] == [r["size"] for r in world.records]


async def test_read_columns_refuses_what_it_cannot_serve(world: World) -> None:
    async def code(who: Person, columns: list[str], batch_rows: int = 0) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await read_columns(world, who, columns, batch_rows)
        return info.value.code(), info.value.details() or ""

    assert (await code(world.outsider, ["topic"]))[0] == grpc.StatusCode.NOT_FOUND
    status, details = await code(world.viewer, ["topic", "nope"])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "column 'nope' not found; the dataset has: " in details
    status, details = await code(world.viewer, [])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "columns is required" in details
    status, details = await code(world.viewer, [f"c{i}" for i in range(33)])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "at most 32" in details
    status, details = await code(world.viewer, ["topic", "topic"])
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "twice" in details
    status, details = await code(world.viewer, ["topic"], batch_rows=10**6)
    assert status == grpc.StatusCode.INVALID_ARGUMENT and "batch_rows" in details


async def test_text_search_ranks_the_best_match_first(world: World, mapped: tuple[str, list[job_pb2.Job]]) -> None:
    name, _ = mapped
    found = await world.stubs.projection.SearchPoints(
        projection_pb2.SearchPointsRequest(name=name, query="lantern", column="text", limit=50),
        metadata=world.viewer.md,
    )
    assert [m.row_index for m in found.matches] == LANTERN_ROWS
    scores = [m.score for m in found.matches]
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)) and scores[-1] > 0
    top = await world.stubs.projection.SearchPoints(
        projection_pb2.SearchPointsRequest(name=name, query="LANTERN", column="text", limit=2),
        metadata=world.viewer.md,
    )
    assert [m.row_index for m in top.matches] == LANTERN_ROWS[:2]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await world.stubs.projection.SearchPoints(
            projection_pb2.SearchPointsRequest(name=name, query="lantern", column="nope"), metadata=world.viewer.md
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_map_progress_advances_through_its_stages(mapped: tuple[str, list[job_pb2.Job]]) -> None:
    _, seen = mapped
    running = [j for j in seen if j.state == job_pb2.JOB_STATE_RUNNING and j.total]
    values = [j.progress for j in running]
    assert values == sorted(values), values  # never backwards
    assert [j.done for j in running] == sorted(j.done for j in running)
    assert all(j.total == ROWS for j in running)
    inside = sorted({round(v, 6) for v in values if 0 < v < 1})
    assert len(inside) >= 4, [(j.stage, j.progress) for j in seen]  # not "0 / N" until the end
    stages = [j.stage for j in running]
    for earlier, later in (("clustering", "labelling"), ("labelling", "saving")):
        assert stages.index(earlier) < stages.index(later), stages
        first = {s: next(j.progress for j in running if j.stage == s) for s in (earlier, later)}
        assert first[earlier] < first[later]
    assert seen[-1].progress == 1.0 and seen[-1].done == ROWS


def test_a_plan_moves_through_every_stage_and_never_back() -> None:
    plan = progress.MapProgress(progress.stages_of(maps.MapParams(), sampled=True), 1000)
    steps = [
        plan.at(progress.LOADING, 500, 1000),
        plan.at(maps.STAGE_PRE_REDUCTION),
        plan.at(maps.STAGE_NEIGHBOURS),
        plan.at(maps.STAGE_OPTIMISATION, 10, 200),
        plan.at(maps.STAGE_OPTIMISATION, 190, 200),
        plan.at(maps.STAGE_PLACING, 5, 10),
        plan.at(progress.CLUSTERING),
        plan.at(progress.QUALITY),
        plan.at(progress.LABELLING),
        plan.at(progress.SAVING),
    ]
    done = [d for d, _ in steps]
    assert all(a < b for a, b in zip(done, done[1:], strict=False)) and done[-1] < 1000, done
    assert plan.at(progress.LOADING, 0, 1000)[0] == done[-1]  # a late report does not move it back
    assert progress.stages_of(maps.MapParams(method=maps.PCA), sampled=False)[1] == progress.PCA


def test_umap_epoch_bar_becomes_optimisation_progress() -> None:
    heard: list[tuple[str, int, int]] = []
    counts = maps._EpochCounts(lambda stage, done, total: heard.append((stage, done, total)))
    for _ in tqdm(range(50), file=counts, bar_format="{n}/{total}\n", mininterval=0, miniters=1, ascii=True):
        pass
    assert heard[-1] == (maps.STAGE_OPTIMISATION, 50, 50)
    assert [d for _, d, _ in heard] == sorted(d for _, d, _ in heard) and len(heard) > 10
