"""The projection service at depth, on real labelled text: Debian package descriptions
(`apt-cache dumpavail`) with their section as the label, embedded with the packaged
all-MiniLM-L6-v2 (the topic sentences of tests/support/texts.py where apt has no lists).
Real PostgreSQL, NATS and gRPC; auth, ingest and embedding are stand-ins over gRPC
(tests/projection/standins.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytest_asyncio

from embedviz.v1 import embedding_pb2, ingest_pb2, job_pb2, projection_pb2, projection_pb2_grpc
from services.common.app import close_deps, open_deps
from services.common.config import Settings
from services.common.events import EVENTS_STREAM
from services.projection import labels
from services.projection.server import build
from services.stack import Stack
from tests.projection import debian, standins
from tests.projection.standins import auth
from tests.support import texts as topic_texts

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "projection" / "migrations"
PROJECT = "projects/depth"
DATASET = f"{PROJECT}/datasets/packages"
EMBEDDING = f"{DATASET}/embeddings/minilm"
OWNER, VIEWER = standins.new_user(), standins.new_user()
SECTIONS = ("fonts", "games", "sound", "mail", "science")
PER_SECTION = 60
# (row of a description, row of its near-duplicate), filled in by `labelled_rows`
DUPLICATES: list[tuple[int, int]] = []


def labelled_rows() -> tuple[list[str], list[str], list[str]]:
    """(names, labels, texts): PER_SECTION packages of each section, spread over the
    alphabet, then a near-duplicate of three of them."""
    names: list[str] = []
    labels: list[str] = []
    texts: list[str] = []
    packages = [p for p in debian.packages() if p.section in SECTIONS and len(p.summary) > 25]
    by_section = {s: sorted((p for p in packages if p.section == s), key=lambda p: p.name) for s in SECTIONS}
    if all(len(v) >= PER_SECTION for v in by_section.values()):
        for section, members in by_section.items():
            step = len(members) / PER_SECTION
            for i in range(PER_SECTION):
                p = members[int(i * step)]
                names.append(p.name)
                labels.append(section)
                texts.append(p.summary)
    else:  # no apt lists: topic sentences
        for row in topic_texts.rows(PER_SECTION * len(SECTIONS))[6:]:
            names.append(row["title"])
            labels.append(row["topic"])
            texts.append(row["text"])
    DUPLICATES.clear()
    for original in (3, PER_SECTION + 7, 2 * PER_SECTION + 11):
        DUPLICATES.append((original, len(texts)))
        names.append(names[original] + "-dup")
        labels.append(labels[original])
        texts.append(texts[original].rstrip(".") + ".")
    return names, labels, texts


@pytest.fixture(scope="module")
def world() -> standins.World:
    from sentence_transformers import SentenceTransformer

    names, labels, texts = labelled_rows()
    model = SentenceTransformer(Settings.from_env().model_path, device="cpu")
    world = standins.World(
        project=PROJECT, roles={OWNER: ingest_pb2.ROLE_OWNER, VIEWER: ingest_pb2.ROLE_VIEWER}, model=model
    )
    table = pa.table({"name": names, "section": labels, "summary": texts, "n": list(range(len(texts)))})
    world.datasets[DATASET] = standins.Dataset(table)
    world.embeddings[EMBEDDING] = (DATASET, world.embed(texts), job_pb2.JOB_STATE_SUCCEEDED, ["summary"])
    return world


@dataclasses.dataclass
class Service:
    stub: projection_pb2_grpc.ProjectionServiceStub
    nats_url: str


@pytest_asyncio.fixture(scope="module")
async def service(
    infra: Stack, world: standins.World, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    others, address = await standins.serve(world)
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
    deps = await open_deps("projection", settings, "projection", MIGRATIONS, keys=standins.keys)
    built = await build(deps)
    port = built.server.add_insecure_port("127.0.0.1:0")
    await built.server.start()
    stop = asyncio.Event()
    workers = [asyncio.create_task(job(stop)) for job in built.background]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Service(projection_pb2_grpc.ProjectionServiceStub(channel), infra.nats_url)
    finally:
        stop.set()
        await asyncio.wait(workers, timeout=30)
        await channel.close()
        await built.server.stop(1)
        await close_deps(deps)
        await others.stop(1)


def create(stub: projection_pb2_grpc.ProjectionServiceStub, parent: str = EMBEDDING, **spec: Any) -> Any:
    return stub.CreateProjection(
        projection_pb2.CreateProjectionRequest(parent=parent, projection=projection_pb2.Projection(**spec)),
        metadata=auth(OWNER),
    )


async def finished(
    stub: projection_pb2_grpc.ProjectionServiceStub, name: str, stages: list[str] | None = None
) -> projection_pb2.Projection:
    last = None
    async for update in stub.WatchProjection(
        projection_pb2.WatchProjectionRequest(name=name), metadata=auth(VIEWER), timeout=300
    ):
        last = update.projection
        if stages is not None and (not stages or stages[-1] != last.job.stage):
            stages.append(last.job.stage)
    assert last is not None
    assert last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last.job.error
    return last


async def points_of(stub: projection_pb2_grpc.ProjectionServiceStub, name: str) -> tuple[np.ndarray, np.ndarray]:
    coords, clusters = [], []
    async for chunk in stub.StreamPoints(projection_pb2.StreamPointsRequest(name=name), metadata=auth(VIEWER)):
        coords.append(np.frombuffer(chunk.coordinates, "<f4").reshape(chunk.count, chunk.dimensions))
        clusters.append(np.frombuffer(chunk.cluster_ids, "<i4"))
    return np.concatenate(coords), np.concatenate(clusters)


async def expect_error(call: Any, code: grpc.StatusCode, text: str = "") -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert text in (info.value.details() or ""), info.value.details()


@pytest_asyncio.fixture(scope="module")
async def labelled_map(service: Service) -> tuple[projection_pb2.Projection, list[str]]:
    created = await create(
        service.stub,
        seed=1,
        label_column="section",
        clustering=projection_pb2.ClusterParams(algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS, k=len(SECTIONS)),
    )
    stages: list[str] = []
    return await finished(service.stub, created.name, stages), stages


async def test_map_neighbours_mostly_share_the_section_far_above_chance(
    service: Service, world: standins.World, labelled_map: tuple[projection_pb2.Projection, list[str]]
) -> None:
    done, stages = labelled_map
    table = world.datasets[DATASET].table
    assert done.point_count == table.num_rows and done.fitted_rows == table.num_rows
    quality = done.quality
    assert quality.labelled_rows == table.num_rows and quality.neighbors == 10
    assert quality.label_agreement >= 0.5, quality
    assert quality.label_agreement >= quality.shuffled_label_agreement + 0.25, quality
    assert 0.1 < quality.shuffled_label_agreement < 0.35, quality  # five sections: chance is about 0.2
    assert quality.trustworthiness >= 0.8, quality
    # the five k-means clusters against the five sections, by adjusted mutual information
    _, clusters = await points_of(service.stub, done.name)
    from sklearn.metrics import adjusted_mutual_info_score

    sections = table.column("section").to_pylist()
    assert 0.3 <= quality.cluster_agreement <= 1.0, quality
    assert abs(quality.cluster_agreement - adjusted_mutual_info_score(sections, clusters)) < 1e-4
    # the same measure, taken by a client from the points it is sent
    points, _ = await points_of(service.stub, done.name)
    labels = np.asarray(table.column("section").to_pylist())
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, axis=1)[:, :10]
    assert abs(float((labels[nearest] == labels[:, None]).mean()) - quality.label_agreement) < 0.02
    # the job named its stages in order, as a watcher saw them
    order = [
        "loading vectors",
        "pre-reduction",
        "neighbours",
        "optimisation",
        "clustering",
        "quality",
        "labelling",
        "saving",
        "done",
    ]
    seen = [s for s in stages if s in order]
    assert seen == sorted(seen, key=order.index), stages
    assert {"clustering", "quality", "labelling", "done"} <= set(seen), stages


async def test_cluster_labels_are_words_found_in_the_clusters_texts(
    service: Service, world: standins.World, labelled_map: tuple[projection_pb2.Projection, list[str]]
) -> None:
    done, _ = labelled_map
    _, clusters = await points_of(service.stub, done.name)
    texts = world.datasets[DATASET].table.column("summary").to_pylist()
    listed = await service.stub.ListClusters(
        projection_pb2.ListClustersRequest(parent=done.name), metadata=auth(VIEWER)
    )
    assert sum(c.size for c in listed.clusters) == len(texts)
    assert len(listed.clusters) == len(SECTIONS)
    for cluster in listed.clusters:
        joined = " ".join(texts[i] for i in np.flatnonzero(clusters == cluster.id)).lower()
        members = set(re.findall(r"[^\W\d_]+", joined))
        label_words = set(cluster.label.replace(",", " ").split())
        assert cluster.terms and label_words <= {w for t in cluster.terms for w in t.split()}, cluster
        for term in cluster.terms[:5]:
            assert set(term.split()) <= members, (term, cluster.label)
        # one form per word: no "font, fonts"
        assert not any(labels.repeats(t, cluster.terms[:i]) for i, t in enumerate(cluster.terms)), cluster.terms


# words a person would expect in the name of a group of each section's packages
SECTION_WORDS = {
    "fonts": ("font", "typeface", "glyph", "truetype", "opentype"),
    "games": ("game", "puzzle", "arcade", "player", "strategy", "board", "chess"),
    "sound": ("sound", "audio", "music", "midi", "alsa", "pulseaudio", "jack", "synthesizer", "player"),
    "mail": ("mail", "email", "imap", "smtp", "mailbox", "message", "spam", "pop"),
    "science": ("science", "scientific", "chemistry", "physics", "astronomy", "molecular", "biology",
                "simulation", "data", "analysis", "mathematical", "calculation", "quantum", "genome",
                "sequence", "protein", "dna", "bioinformatics", "statistic", "numerical", "math"),
}


async def test_default_clusters_follow_the_sections_and_their_labels_name_them(
    service: Service, world: standins.World
) -> None:
    """The default clustering (HDBSCAN in the 5-D UMAP of the vectors) on real labelled
    text: the clusters agree with the sections far above chance, the levels nest, and the
    label of each large cluster holds a word of its dominant section."""
    from sklearn.metrics import adjusted_mutual_info_score

    created = await create(service.stub, seed=2, method=projection_pb2.PROJECTION_METHOD_PCA)
    done = await finished(service.stub, created.name)
    assert done.clustering.algorithm == projection_pb2.CLUSTER_ALGORITHM_HDBSCAN
    assert done.clustering.space == projection_pb2.CLUSTER_SPACE_REDUCED
    sections = np.asarray(world.datasets[DATASET].table.column("section").to_pylist())
    _, clusters = await points_of(service.stub, done.name)
    kept = clusters >= 0
    ami = adjusted_mutual_info_score(sections[kept], clusters[kept])
    assert ami >= 0.5 and kept.mean() >= 0.6, (ami, kept.mean(), done.cluster_count)
    tree = (
        await service.stub.ListClusters(
            projection_pb2.ListClustersRequest(parent=done.name, all_levels=True), metadata=auth(VIEWER)
        )
    ).clusters
    by_id = {c.id: c for c in tree}
    for cluster in (c for c in tree if c.id >= 0):  # every level's sizes add up from the level below
        children = [c for c in tree if c.parent_id == cluster.id]
        if children:
            assert cluster.size == sum(c.size for c in children) and all(c.level == cluster.level - 1 for c in children)
    named = 0
    for cluster in (c for c in tree if c.level == 0 and c.id >= 0 and c.size >= 20):
        members = sections[clusters == cluster.id]
        values, counts = np.unique(members, return_counts=True)
        dominant, share = str(values[counts.argmax()]), counts.max() / counts.sum()
        if share < 0.6:
            continue
        words = [labels.form(w) for w in cluster.label.replace(",", " ").split()]
        parent = by_id.get(cluster.parent_id)
        if parent is not None:  # the section's word may stand in the parent's label instead
            words += [labels.form(w) for w in parent.label.replace(",", " ").split()]
        expected = [labels.form(w) for w in SECTION_WORDS[dominant]]
        summary = [(c.id, c.level, c.parent_id, c.size, c.label) for c in tree]
        named_it = any(w.startswith(e) or e.startswith(w) for w in words for e in expected)
        assert named_it, (dominant, cluster.label, summary)
        named += 1
    summary = [(c.id, c.level, c.parent_id, c.size, c.label) for c in tree]
    assert named >= 3, summary


async def test_search_by_meaning_returns_rows_about_the_phrase_first_with_scores(
    service: Service, world: standins.World, labelled_map: tuple[projection_pb2.Projection, list[str]]
) -> None:
    done, _ = labelled_map
    table = world.datasets[DATASET].table
    sections = table.column("section").to_pylist()
    queries = {"fonts": "a typeface for printing and the screen", "mail": "read and send email messages"}
    if "fonts" not in sections:
        queries = {"cooking": "baking bread in the kitchen"}
    for section, query in queries.items():
        found = await service.stub.SearchPoints(
            projection_pb2.SearchPointsRequest(name=done.name, query=query, limit=5), metadata=auth(VIEWER)
        )
        assert [sections[m.row_index] for m in found.matches] == [section] * 5, query
        scores = [m.score for m in found.matches]
        assert scores == sorted(scores, reverse=True) and 0.2 < scores[-1] <= scores[0] <= 1.0
    # substring search in one column
    needle = "font" if "fonts" in sections else "bread"
    column = "name" if "fonts" in sections else "summary"
    found = await service.stub.SearchPoints(
        projection_pb2.SearchPointsRequest(name=done.name, query=needle, column=column, limit=1000),
        metadata=auth(VIEWER),
    )
    values = table.column(column).to_pylist()
    assert {m.row_index for m in found.matches} == {i for i, v in enumerate(values) if needle in v.lower()}


async def test_neighbours_of_a_row_include_its_near_duplicate(
    service: Service, labelled_map: tuple[projection_pb2.Projection, list[str]]
) -> None:
    done, _ = labelled_map
    for original, duplicate in DUPLICATES:
        near = await service.stub.FindNeighbors(
            projection_pb2.FindNeighborsRequest(name=done.name, row_index=original, limit=5), metadata=auth(VIEWER)
        )
        assert near.neighbors[0].row_index == duplicate and near.neighbors[0].score > 0.95, near
        assert original not in [n.row_index for n in near.neighbors]


async def _export(
    stub: projection_pb2_grpc.ProjectionServiceStub, name: str, file_format: int, columns: list[str], rows: list[int]
) -> tuple[bytes, str, int]:
    data, types, chunks = b"", set(), 0
    async for part in stub.ExportProjection(
        projection_pb2.ExportProjectionRequest(name=name, format=file_format, columns=columns, row_indexes=rows),
        metadata=auth(VIEWER),
    ):
        data += part.data
        types.add(part.content_type)
        chunks += 1
    assert len(types) == 1
    return data, types.pop(), chunks


async def test_export_of_a_selection_has_exactly_those_rows_and_columns(
    service: Service, world: standins.World, labelled_map: tuple[projection_pb2.Projection, list[str]]
) -> None:
    done, _ = labelled_map
    table = world.datasets[DATASET].table
    points, clusters = await points_of(service.stub, done.name)
    listed = await service.stub.ListClusters(
        projection_pb2.ListClustersRequest(parent=done.name), metadata=auth(VIEWER)
    )
    label_of = {c.id: c.label for c in listed.clusters}
    selection = [250, 5, 2, 5, 120]
    wanted = [2, 5, 120, 250]
    header = ["row", "x", "y", "cluster", "label", "name", "section"]

    def check(records: list[dict[str, Any]]) -> None:
        assert [r["row"] for r in records] == wanted
        for r in records:
            i = r["row"]
            assert list(r) == header
            assert (r["name"], r["section"]) == (table.column("name")[i].as_py(), table.column("section")[i].as_py())
            assert r["cluster"] == clusters[i] and r["label"] == label_of[clusters[i]]
            assert abs(r["x"] - points[i, 0]) < 1e-4 and abs(r["y"] - points[i, 1]) < 1e-4

    data, kind, _ = await _export(
        service.stub, done.name, projection_pb2.EXPORT_FORMAT_CSV, ["name", "section"], selection
    )
    assert kind == "text/csv"
    import csv

    rows = list(csv.DictReader(io.StringIO(data.decode())))
    check(
        [
            {**r, "row": int(r["row"]), "x": float(r["x"]), "y": float(r["y"]), "cluster": int(r["cluster"])}
            for r in rows
        ]
    )

    data, kind, _ = await _export(
        service.stub, done.name, projection_pb2.EXPORT_FORMAT_JSONL, ["name", "section"], selection
    )
    assert kind == "application/jsonl"
    check([json.loads(line) for line in data.decode().splitlines()])

    data, kind, _ = await _export(
        service.stub, done.name, projection_pb2.EXPORT_FORMAT_PARQUET, ["name", "section"], selection
    )
    assert kind == "application/vnd.apache.parquet"
    check(pq.read_table(pa.BufferReader(data)).to_pylist())

    # everything, no dataset columns; in more than one chunk for the dataset columns
    data, _, _ = await _export(service.stub, done.name, projection_pb2.EXPORT_FORMAT_PARQUET, [], [])
    whole = pq.read_table(pa.BufferReader(data))
    assert whole.column_names == header[:5] and whole.num_rows == table.num_rows
    data, _, chunks = await _export(service.stub, done.name, projection_pb2.EXPORT_FORMAT_JSONL, ["summary"], [])
    lines = data.decode().splitlines()
    assert len(lines) == table.num_rows and chunks > 1
    assert [json.loads(line)["summary"] for line in lines] == table.column("summary").to_pylist()

    await expect_error(
        _export(service.stub, done.name, projection_pb2.EXPORT_FORMAT_CSV, ["nope"], []),
        grpc.StatusCode.INVALID_ARGUMENT,
        "column 'nope' not found; the dataset has: name, section, summary, n",
    )
    await expect_error(
        _export(service.stub, done.name, projection_pb2.EXPORT_FORMAT_CSV, [], [table.num_rows]),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"row index {table.num_rows} is not in the map",
    )


@pytest.mark.slow
async def test_a_seed_makes_the_same_map_through_the_service(service: Service) -> None:
    for method, dimensions in (
        (projection_pb2.PROJECTION_METHOD_UMAP, 2),
        (projection_pb2.PROJECTION_METHOD_TSNE, 2),
        (projection_pb2.PROJECTION_METHOD_PCA, 3),
    ):
        spec = dict(method=method, dimensions=dimensions, seed=5, tsne=projection_pb2.TsneParams(perplexity=20))
        first = await create(service.stub, **spec)
        second = await create(service.stub, **spec)
        a, _ = await points_of(service.stub, (await finished(service.stub, first.name)).name)
        b, _ = await points_of(service.stub, (await finished(service.stub, second.name)).name)
        assert a.shape[1] == dimensions
        np.testing.assert_allclose(a, b, atol=1e-5)


async def test_label_column_must_exist(service: Service) -> None:
    await expect_error(
        create(service.stub, label_column="colour"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "label_column 'colour' not found; the dataset has: name, section, summary, n",
    )


async def test_project_when_done_gets_a_default_projection_from_the_embedding_event(
    service: Service, world: standins.World
) -> None:
    asked = f"{DATASET}/embeddings/asked-{uuid.uuid4().hex[:8]}"
    not_asked = f"{DATASET}/embeddings/plain-{uuid.uuid4().hex[:8]}"
    _, vectors, _, columns = world.embeddings[EMBEDDING]
    for name in (asked, not_asked):
        world.embeddings[name] = (DATASET, vectors, job_pb2.JOB_STATE_SUCCEEDED, columns)

    def event(name: str, wanted: bool, state: int) -> bytes:
        return embedding_pb2.Embedding(
            name=name, project_when_done=wanted, row_count=len(vectors), dimension=vectors.shape[1],
            job=job_pb2.Job(state=state), creator=f"users/{OWNER}",
        ).SerializeToString()

    nc = await nats.connect(service.nats_url)
    js = nc.jetstream()
    try:
        await js.publish(
            f"events.embedding.{asked.rsplit('/', 1)[1]}",
            event(asked, True, job_pb2.JOB_STATE_RUNNING),
            stream=EVENTS_STREAM,
        )
        await js.publish(
            f"events.embedding.{not_asked.rsplit('/', 1)[1]}",
            event(not_asked, False, job_pb2.JOB_STATE_SUCCEEDED),
            stream=EVENTS_STREAM,
        )
        for _ in range(2):  # delivered twice, made once
            await js.publish(
                f"events.embedding.{asked.rsplit('/', 1)[1]}",
                event(asked, True, job_pb2.JOB_STATE_SUCCEEDED),
                stream=EVENTS_STREAM,
            )
    finally:
        await nc.close()

    async def listed(parent: str) -> list[projection_pb2.Projection]:
        response = await service.stub.ListProjections(
            projection_pb2.ListProjectionsRequest(parent=parent), metadata=auth(VIEWER)
        )
        return list(response.projections)

    for _ in range(100):
        if await listed(asked):
            break
        await asyncio.sleep(0.2)
    made = await listed(asked)
    assert len(made) == 1
    done = await finished(service.stub, made[0].name)
    assert done.method == projection_pb2.PROJECTION_METHOD_UMAP and done.dimensions == 2
    assert done.clustering.algorithm == projection_pb2.CLUSTER_ALGORITHM_HDBSCAN
    assert done.point_count == len(vectors)
    await asyncio.sleep(1)
    assert len(await listed(asked)) == 1
    assert await listed(not_asked) == []
