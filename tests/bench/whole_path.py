"""The whole path at scale against a running stack (`make run`): sign up, upload a table of
real text as Parquet, import, embed, make a UMAP map, stream every point. Prints each
stage's time and the peak memory of each part of the system (sampled from /proc every
second: the service's own process and its whole process tree, so fit children and
embedding workers count), and writes them to build/bench/whole_path-<rows>.json.

    make run                                          # in one terminal
    make bench BENCH=whole_path ROWS=1000000          # in another (default 1,000,000)

A run that was stopped while embedding (the stack stopped with it) goes on from there: start
the same stack again (`make run`; the job resumes from its checkpoints) and run
`ATTACH=<the embedding's name> EMAIL=<the user> make bench BENCH=whole_path`; both were
printed when the run started. `ATTACH_MAP=<its map's name>` as well streams the points of
a map that finished (when this script died after it) instead of making a new one.

EDGE (default 127.0.0.1:8080) names the edge. The table is real text found on the machine:
every Debian package summary (`apt-cache dumpavail`), every sentence of the docstrings of
the installed Python libraries, every entry of the Debian changelogs under /usr/share/doc
(about 630,000 distinct texts here), cycled when they run out, with the row's source and
Debian section as extra columns. Nothing here is timed inside a test:
this is a measurement, not a check (the checks are tests/test_whole_path.py and the fault
tests)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from embedviz.v1 import (  # noqa: E402
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

ROWS = int(os.environ.get("ROWS", "1000000"))
EDGE = os.environ.get("EDGE", "127.0.0.1:8080")
ATTACH = os.environ.get("ATTACH", "")  # an embedding this script started before (see attach)
ATTACH_MAP = os.environ.get("ATTACH_MAP", "")  # with ATTACH: its finished map, to stream (no new map)
CHUNK = 4 * 1024 * 1024
PASSWORD = "correct horse battery staple"
OUT = ROOT / "build" / "bench"
PARTS = {
    "auth": "services.auth",
    "ingest": "services.ingest",
    "embedding": "services.embedding",
    "projection": "services.projection",
    "postgres": "postgres",
    "nats": "nats-server",
    "envoy": "envoy",
}


def _docstring_sentences() -> list[str]:
    import re
    import sysconfig

    body = re.compile(r'"""(.*?)"""', re.S)
    out: dict[str, None] = {}
    for where in ("purelib", "stdlib"):
        for path in sorted(Path(sysconfig.get_paths()[where]).rglob("*.py")):
            try:
                source = path.read_text(errors="ignore")
            except OSError:
                continue
            for match in body.finditer(source):
                for sentence in re.split(r"(?<=[.!?])\s+", " ".join(match.group(1).split())):
                    if 30 <= len(sentence) <= 300 and not sentence.startswith((">>>", "..")):
                        out[sentence] = None
    return list(out)


def _changelog_lines() -> list[str]:
    import gzip

    out: dict[str, None] = {}
    for path in sorted(Path("/usr/share/doc").glob("*/changelog*.gz")):
        try:
            text = gzip.open(path, "rt", errors="ignore").read()
        except (OSError, EOFError):
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith(("* ", "- ")) and len(line) >= 32:
                out[line[2:]] = None
    return list(out)


def table(count: int) -> pa.Table:
    """Debian package summaries (with their section), then sentences of the installed
    Python libraries' docstrings, then Debian changelog entries; cycled past the end."""
    from tests.projection import debian

    text: list[str] = []
    source: list[str] = []
    section: list[str] = []
    for package in debian.packages():
        text.append(package.summary)
        source.append("debian-summary")
        section.append(package.section)
    for kind, lines in (("docstring", _docstring_sentences()), ("changelog", _changelog_lines())):
        text.extend(lines)
        source.extend([kind] * len(lines))
        section.extend([""] * len(lines))
    unique = len(text)
    pick = np.arange(count) % unique
    print(f"table: {count} rows from {unique} texts (each used at most {-(-count // unique)}x)", flush=True)
    return pa.table(
        {
            "id": pa.array(np.arange(count, dtype=np.int64)),
            "text": pa.array([text[i] for i in pick]),
            "source": pa.array([source[i] for i in pick]).dictionary_encode(),
            "section": pa.array([section[i] for i in pick]).dictionary_encode(),
        }
    )


class Memory:
    """Peak resident memory per part, sampled every second from /proc."""

    def __init__(self) -> None:
        self.own: dict[str, int] = {}
        self.tree: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _processes() -> dict[int, tuple[int, str, int]]:
        out: dict[int, tuple[int, str, int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            out[int(entry.name)] = (int(fields.get("PPid", "0")), cmd, rss)
        return out

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            procs = self._processes()
            children: dict[int, list[int]] = {}
            for pid, (ppid, _, _) in procs.items():
                children.setdefault(ppid, []).append(pid)
            for part, needle in PARTS.items():
                roots = [
                    pid for pid, (ppid, cmd, _) in procs.items()
                    if needle in cmd and not (ppid in procs and needle in procs[ppid][1])
                ]
                own = sum(procs[p][2] for p in roots)
                tree, todo = 0, list(roots)
                while todo:
                    pid = todo.pop()
                    tree += procs[pid][2]
                    todo.extend(children.get(pid, []))
                self.own[part] = max(self.own.get(part, 0), own)
                self.tree[part] = max(self.tree.get(part, 0), tree)


class Client:
    def __init__(self, channel: grpc.aio.Channel, email: str) -> None:
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        self.embedding = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        self.projection = projection_pb2_grpc.ProjectionServiceStub(channel)
        self.email = email
        self._token = ""
        self._minted = 0.0

    async def meta(self) -> list[tuple[str, str]]:
        if time.monotonic() - self._minted > 300:  # sessions last 15 min; log in again well before
            reply = await self.auth.Login(auth_pb2.LoginRequest(email=self.email, password=PASSWORD))
            self._token, self._minted = reply.session.access_token, time.monotonic()
        return [("authorization", f"Bearer {self._token}")]


async def follow(
    open_stream: Callable[[list[tuple[str, str]]], AsyncIterator[Any]],
    job_of: Callable[[Any], job_pb2.Job],
    client: Client,
    label: str,
    stages: dict[str, float],
) -> Any:
    """Follow a Watch stream to the end, opening a new one when the edge or a service cuts
    it (a long job outlives any one stream's token). Logs progress every 30 s."""
    last_log, seen_stage = 0.0, ""
    while True:
        try:
            async for update in open_stream(await client.meta()):
                job = job_of(update)
                if job.state == 0:  # a heartbeat
                    continue
                if job.stage != seen_stage:
                    seen_stage = job.stage
                    stages[f"{label}:{job.stage}"] = time.monotonic()
                if time.monotonic() - last_log > 30:
                    last_log = time.monotonic()
                    print(f"  {label}: {job_pb2.JobState.Name(job.state)} {job.stage} {job.done}/{job.total} "
                          f"rate={job.rate:.0f}/s eta={job.eta_seconds:.0f}s", flush=True)
                if job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED):
                    stages[f"{label}:(end)"] = time.monotonic()
                    return update
        except grpc.aio.AioRpcError as exc:
            print(f"  {label}: watch ended {exc.code().name} ({exc.details()}); watching again", flush=True)
            await asyncio.sleep(2)


def edge_is_up() -> bool:
    import socket

    host, _, port = EDGE.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return True
    except OSError:
        return False


async def upload_import_embed(
    client: Client, result: dict[str, Any], times: dict[str, float], stage_marks: dict[str, float]
) -> Any:
    """Sign up, make the table, upload it, import it and embed it; returns the embedding."""
    t = time.monotonic()
    data_table = table(ROWS)
    buffer = io.BytesIO()
    pq.write_table(data_table, buffer, compression="zstd", row_group_size=65536)
    data = buffer.getvalue()
    result["parquet_bytes"] = len(data)
    print(f"parquet: {len(data) / 1e6:.1f} MB, made in {time.monotonic() - t:.1f} s", flush=True)
    await client.auth.SignUp(auth_pb2.SignUpRequest(email=client.email, password=PASSWORD))
    project = await client.ingest.CreateProject(
        ingest_pb2.CreateProjectRequest(project=ingest_pb2.Project(display_name=f"{ROWS} rows")),
        metadata=await client.meta(),
    )

    t0 = time.monotonic()
    upload = await client.ingest.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project.name, upload=ingest_pb2.Upload(filename="texts.parquet", size_bytes=len(data))
        ),
        metadata=await client.meta(),
    )
    for offset in range(0, len(data), CHUNK):
        await client.ingest.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=offset, data=data[offset : offset + CHUNK]),
            metadata=await client.meta(),
        )
    dataset = await client.ingest.FinishUpload(
        ingest_pb2.FinishUploadRequest(name=upload.name), metadata=await client.meta()
    )
    times["upload_s"] = time.monotonic() - t0
    print(f"upload: {times['upload_s']:.1f} s", flush=True)

    t0 = time.monotonic()
    final = await follow(
        lambda m: client.ingest.WatchDataset(ingest_pb2.WatchDatasetRequest(name=dataset.name), metadata=m),
        lambda u: u.dataset.job, client, "import", stage_marks,
    )
    dataset = final.dataset
    times["import_s"] = time.monotonic() - t0
    assert dataset.job.state == job_pb2.JOB_STATE_SUCCEEDED, dataset.job.error
    assert dataset.row_count == ROWS, dataset.row_count
    print(f"import: {times['import_s']:.1f} s, {dataset.row_count} rows", flush=True)

    t0 = time.monotonic()
    embedding = await client.embedding.CreateEmbedding(
        embedding_pb2.CreateEmbeddingRequest(
            parent=dataset.name, embedding=embedding_pb2.Embedding(text_columns=["text"])
        ),
        metadata=await client.meta(),
    )
    print(f"embedding: {embedding.name}", flush=True)
    embedding = await follow_embedding(client, embedding.name, stage_marks)
    times["embed_s"] = time.monotonic() - t0
    print(f"embed: {times['embed_s']:.1f} s ({ROWS / times['embed_s']:.0f} rows/s)", flush=True)
    return embedding


async def follow_embedding(client: Client, name: str, stage_marks: dict[str, float]) -> Any:
    final = await follow(
        lambda m: client.embedding.WatchEmbedding(embedding_pb2.WatchEmbeddingRequest(name=name), metadata=m),
        lambda u: u.embedding.job, client, "embed", stage_marks,
    )
    embedding = final.embedding
    assert embedding.job.state == job_pb2.JOB_STATE_SUCCEEDED, embedding.job.error
    return embedding


async def attach(
    client: Client, result: dict[str, Any], times: dict[str, float], stage_marks: dict[str, float]
) -> Any:
    """ATTACH=<embedding name> EMAIL=<its owner>: follow an embedding that an earlier run of
    this script started (its stack was stopped and started again, so the job resumed from
    its checkpoints), then go on with the map and the points. Its wall time is the job's
    own (creation to end), which includes the time the stack was down."""
    embedding = await follow_embedding(client, ATTACH, stage_marks)
    job = embedding.job
    times["embed_wall_s"] = job.end_time.ToDatetime().timestamp() - job.create_time.ToDatetime().timestamp()
    result["attached"] = ATTACH
    print(f"embed (attached): {embedding.row_count} rows, {times['embed_wall_s']:.0f} s from creation to end, "
          "stack downtime included", flush=True)
    return embedding


async def make_map(client: Client, embedding: Any, stage_marks: dict[str, float]) -> Any:
    """A 2-D UMAP map with the default clustering (HDBSCAN in a 5-D UMAP of the vectors,
    with its levels and labels) and its quality measured against the Debian sections,
    unseeded as a person's map is (a seed makes UMAP single-threaded), followed to its end
    over Watch."""
    projection = await client.projection.CreateProjection(
        projection_pb2.CreateProjectionRequest(
            parent=embedding.name,
            projection=projection_pb2.Projection(
                method=projection_pb2.PROJECTION_METHOD_UMAP, dimensions=2, label_column="section",
            ),
        ),
        metadata=await client.meta(),
    )
    final = await follow(
        lambda m: client.projection.WatchProjection(
            projection_pb2.WatchProjectionRequest(name=projection.name), metadata=m
        ),
        lambda u: u.projection.job, client, "map", stage_marks,
    )
    return final.projection


async def main() -> None:
    if not edge_is_up():
        print(f"whole_path: no stack answers at {EDGE}; start one with `make run` first (skipped)")
        return
    from tests.bench.report import Result, env_settings

    report = Result("whole_path", f"The whole path at scale against a running stack at {EDGE}: upload, import, "
                    "embed, map, points", {"ROWS": ROWS, **env_settings("EDGE", "ATTACH", "ATTACH_MAP")})
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"rows": ROWS, "stages": {}}
    times: dict[str, float] = {}
    stage_marks: dict[str, float] = {}

    with Memory() as memory:
        async with grpc.aio.insecure_channel(
            EDGE, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        ) as channel:
            if ATTACH:
                client = Client(channel, os.environ["EMAIL"])
                embedding = await attach(client, result, times, stage_marks)
            else:
                email = f"million-{uuid.uuid4().hex[:8]}@example.org"
                print(f"user: {email}", flush=True)
                client = Client(channel, email)
                embedding = await upload_import_embed(client, result, times, stage_marks)
            rows = embedding.row_count
            t0 = time.monotonic()
            if ATTACH_MAP:
                projection = await client.projection.GetProjection(
                    projection_pb2.GetProjectionRequest(name=ATTACH_MAP), metadata=await client.meta()
                )
                result["attached_map"] = ATTACH_MAP
            else:
                projection = await make_map(client, embedding, stage_marks)
                times["map_s"] = time.monotonic() - t0
            assert projection.job.state == job_pb2.JOB_STATE_SUCCEEDED, projection.job.error
            took = projection.job.end_time.ToDatetime() - projection.job.start_time.ToDatetime()
            print(f"map: {took.total_seconds():.1f} s from start to end, {projection.point_count} points, "
                  f"{projection.cluster_count} clusters", flush=True)
            q = projection.quality
            result["quality"] = {
                "trustworthiness": round(q.trustworthiness, 3), "label_agreement": round(q.label_agreement, 3),
                "shuffled_label_agreement": round(q.shuffled_label_agreement, 3), "labelled_rows": q.labelled_rows,
                "cluster_agreement": round(q.cluster_agreement, 3),
            }
            print(f"map quality: {result['quality']}", flush=True)

            t0 = time.monotonic()
            seen = np.zeros(rows, dtype=np.int32)
            received = 0
            async for chunk in client.projection.StreamPoints(
                projection_pb2.StreamPointsRequest(name=projection.name), metadata=await client.meta()
            ):
                indexes = np.frombuffer(chunk.row_indexes, dtype="<u4")
                np.add.at(seen, indexes, 1)
                coords = np.frombuffer(chunk.coordinates, dtype="<f4")
                assert np.isfinite(coords).all()
                received += len(chunk.row_indexes) + len(chunk.coordinates) + len(chunk.cluster_ids)
            times["points_s"] = time.monotonic() - t0
            assert (seen == 1).all(), f"{int((seen == 0).sum())} rows without a point, {int((seen > 1).sum())} twice"
            result["points_bytes"] = received
            per_point = received / rows
            print(f"points: {times['points_s']:.1f} s, every row exactly once, {per_point:.1f} bytes/point", flush=True)

    marks = sorted(stage_marks.items(), key=lambda kv: kv[1])
    for (name, at), (following, after) in zip(marks, marks[1:], strict=False):
        if not name.endswith(":(end)") and name.split(":")[0] == following.split(":")[0]:
            result["stages"][name] = round(after - at, 1)
    result["times_s"] = {k: round(v, 1) for k, v in times.items()}
    result["peak_rss_mb"] = {part: round(v / 2**20) for part, v in memory.own.items()}
    result["peak_rss_tree_mb"] = {part: round(v / 2**20) for part, v in memory.tree.items()}
    path = OUT / f"whole_path-{rows}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {path}")
    for key, seconds in result["times_s"].items():
        report.figure(f"{key.removesuffix('_s')}, {rows:,} rows", seconds, "s")
    for part, mb in result["peak_rss_tree_mb"].items():
        report.figure(f"peak RSS of {part} with its child processes", mb, "MB")
    for key, value in result["quality"].items():
        report.figure(f"map quality: {key.replace('_', ' ')}", value)
    report.note("No peer: this measures the system as a person meets it; the comparisons are the other benches.")
    report.write()


if __name__ == "__main__":
    asyncio.run(main())
