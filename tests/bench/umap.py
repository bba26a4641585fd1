"""make bench BENCH=umap — UMAP 2-D of 100,000 real 384-d vectors through the job path,
against plain umap-learn `UMAP().fit_transform` on the same vectors in the same run.

Vectors: tests/bench/corpus.py (Debian package descriptions topped up with docstring
lines, embedded once with the packaged all-MiniLM-L6-v2, cached in build/bench-cache).

Ours: the real projection service process (`python -m services.projection`, one worker,
numba warmed up at its start as in production) on real PostgreSQL and NATS; the vectors
and texts come over gRPC from stand-ins for the embedding, ingest and auth services
(tests/projection/standins.py) holding the cached vectors, so no embedding time is
counted. Timed from CreateProjection to SUCCEEDED as seen by WatchProjection: loading the
vectors over gRPC, PCA pre-reduction, neighbours, optimisation, clustering (none),
quality, labelling, saving. Peer: a separate process running plain
`umap.UMAP().fit_transform(vectors)` after a small warm-up fit (so neither side pays
numba's first compilation in the timing). Trustworthiness of both on the same random
sample of 2,000 rows (k=10, cosine).

Then 1,000,000 rows through the sample-and-transform path (same job path): the real
vectors ten times over, each copy perturbed with Gaussian noise and renormalised;
wall time and the service process's peak RSS.

Both sides also get the 10-NN label agreement on the map: of each Debian row's 10 nearest
points, the share in the same Debian section (the docstring rows carry no label).

The million-row job also clusters (the job's default: HDBSCAN on a 5-D UMAP of a 50,000-row
sample, every other row by its 10 nearest sampled rows), so its time and memory are those
of a map a person gets; the 100,000-row comparison maps only (plain umap-learn clusters
nothing). The load average is printed beside each figure.

Settings: BENCH_UMAP_ROWS (100000), BENCH_UMAP_MILLION (1000000; 0 skips it)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import corpus  # noqa: E402
from tests.bench.report import Result, env_settings  # noqa: E402

RESULT = Result("umap", "UMAP 2-D of real 384-d vectors: the projection job path against plain umap-learn",
                env_settings("BENCH_UMAP_ROWS", "BENCH_UMAP_MILLION"))

PEER = r"""
import json, resource, sys, time
import numpy as np
import umap
vectors = np.load(sys.argv[1])
umap.UMAP().fit_transform(np.random.default_rng(0).normal(size=(5000, vectors.shape[1])).astype(np.float32))
started = time.perf_counter()
points = umap.UMAP().fit_transform(vectors)
seconds = time.perf_counter() - started
np.save(sys.argv[2], points.astype(np.float32))
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def trust(vectors: np.ndarray, points: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    rows = np.sort(np.random.default_rng(123).choice(len(points), size=min(2000, len(points)), replace=False))
    return float(
        trustworthiness(
            np.asarray(vectors[rows], np.float64), np.asarray(points[rows], np.float64), n_neighbors=10, metric="cosine"
        )
    )


def agreement(points: np.ndarray, labels: list[str]) -> float:
    """Share of each labelled row's 10 nearest map points (labelled ones) with its label."""
    from sklearn.neighbors import NearestNeighbors

    known = np.asarray(labels)
    rows = np.flatnonzero(known != "")
    if len(rows) < 11:
        return float("nan")
    near = NearestNeighbors(n_neighbors=11).fit(points[rows]).kneighbors(points[rows], return_distance=False)[:, 1:]
    return float((known[rows][near] == known[rows][:, None]).mean())


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_peer(vectors_path: Path, out: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", PEER, str(vectors_path), str(out)], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise SystemExit(f"plain umap failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


async def run_ours(
    vectors: np.ndarray, texts: list[str], work: Path, label: str, cluster: bool = False
) -> tuple[float, np.ndarray, float, dict[str, float]]:
    """(seconds from CreateProjection to SUCCEEDED, points, peak RSS of the service in MB, quality)."""
    import grpc
    import pyarrow as pa

    from embedviz.v1 import ingest_pb2, job_pb2, projection_pb2, projection_pb2_grpc
    from services.stack import Stack
    from tests.projection import standins

    owner = standins.new_user()
    project = "projects/bench"
    dataset = f"{project}/datasets/texts"
    embedding = f"{dataset}/embeddings/minilm"
    world = standins.World(project=project, roles={owner: ingest_pb2.ROLE_OWNER})
    world.datasets[dataset] = standins.Dataset(pa.table({"text": texts}))
    world.embeddings[embedding] = (dataset, vectors, job_pb2.JOB_STATE_SUCCEEDED, ["text"])
    infra = Stack(work / f"infra-{label}", components="infra", ports="free")
    infra.start()
    others, address = await standins.serve(world)
    jwks, jwks_url = await standins.serve_jwks()
    log = open(work / f"projection-{label}.log", "wb")  # noqa: SIM115
    with socket_port() as port:
        pass
    env = {
        **os.environ,
        "EMBEDVIZ_DATABASE_URL": infra.database_url,
        "EMBEDVIZ_NATS_URL": infra.nats_url,
        "EMBEDVIZ_BLOB_ROOT": str(work / f"blobs-{label}"),
        "EMBEDVIZ_INGEST_ADDR": address,
        "EMBEDVIZ_AUTH_ADDR": address,
        "EMBEDVIZ_EMBEDDING_ADDR": address,
        "EMBEDVIZ_PROJECTION_ADDR": f"127.0.0.1:{port}",
        "EMBEDVIZ_JWKS_URL": jwks_url,
        "EMBEDVIZ_INTERNAL_SECRET": "bench-secret",
        "EMBEDVIZ_WORKERS": "1",
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "services.projection"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 900
        while b"umap is compiled and ready" not in (work / f"projection-{label}.log").read_bytes():
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the projection service did not come up; see {work}/projection-{label}.log")
            await asyncio.sleep(1)
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        stub = projection_pb2_grpc.ProjectionServiceStub(channel)
        metadata = standins.auth(owner)
        started = time.perf_counter()
        created = await stub.CreateProjection(
            projection_pb2.CreateProjectionRequest(
                parent=embedding,
                projection=projection_pb2.Projection(
                    clustering=None
                    if cluster
                    else projection_pb2.ClusterParams(algorithm=projection_pb2.CLUSTER_ALGORITHM_NONE)
                ),
            ),
            metadata=metadata,
        )
        last = None
        stages: list[tuple[str, float]] = []
        async for update in stub.WatchProjection(
            projection_pb2.WatchProjectionRequest(name=created.name), metadata=metadata, timeout=3600
        ):
            last = update.projection
            if not stages or stages[-1][0] != last.job.stage:
                stages.append((last.job.stage, time.perf_counter() - started))
        seconds = time.perf_counter() - started
        assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
        print(f"  {label}: stages " + ", ".join(f"{s} @{t:.0f}s" for s, t in stages), file=sys.stderr)
        points = np.zeros((last.point_count, 2), np.float32)
        async for chunk in stub.StreamPoints(projection_pb2.StreamPointsRequest(name=created.name), metadata=metadata):
            rows = np.frombuffer(chunk.row_indexes, "<u4")
            points[rows] = np.frombuffer(chunk.coordinates, "<f4").reshape(chunk.count, 2)
        rss = peak_rss_mb(service.pid)
        quality = {
            "trustworthiness": last.quality.trustworthiness,
            "fitted_rows": last.fitted_rows,
            "pre_reduction_dimensions": last.pre_reduction_dimensions,
            "clusters": last.cluster_count,
        }
        await channel.close()
        return seconds, points, rss, quality
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
        await others.stop(1)
        await jwks.cleanup()
        infra.stop()


class socket_port:
    """A free TCP port (closed again before use)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def million(vectors: np.ndarray, count: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    out = np.empty((count, vectors.shape[1]), np.float32)
    for start in range(0, count, len(vectors)):
        stop = min(start + len(vectors), count)
        block = vectors[: stop - start] + rng.normal(scale=0.02, size=(stop - start, vectors.shape[1])).astype(
            np.float32
        )
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def main() -> None:
    rows = int(os.environ.get("BENCH_UMAP_ROWS", "100000"))
    big = int(os.environ.get("BENCH_UMAP_MILLION", "1000000"))
    vectors = np.ascontiguousarray(corpus.vectors(100_000)[:rows])
    texts = corpus.cached_texts(rows)
    labels = corpus.sections(rows)
    at_start = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {at_start[0]:.1f} {at_start[1]:.1f} {at_start[2]:.1f} at start",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="bench-umap-") as tmp:
        work = Path(tmp)
        if os.environ.get("BENCH_UMAP_SKIP_100K") != "1":  # set: only the million (development)
            compare(vectors, texts, labels, work)
        if big:
            many = million(vectors, big)
            million_texts = [texts[i % len(texts)] for i in range(big)]
            seconds, points, rss, quality = asyncio.run(run_ours(many, million_texts, work, "1m", cluster=True))
            print(
                f"umap million: rows={big} seconds={seconds:.1f} ({load()}) peak_rss_mb={rss:.0f} "
                f"fitted_rows={quality['fitted_rows']} clusters={quality['clusters']} "
                f"all_placed={bool(np.isfinite(points).all())} trustworthiness={trust(many, points):.4f}"
            )
            RESULT.figure(f"{big:,} rows, job path with clustering (sample and place)", seconds, "s",
                          peak_rss_mb=rss, fitted_rows=quality["fitted_rows"], clusters=quality["clusters"],
                          trustworthiness=trust(many, points))
    at_end = os.getloadavg()
    print(f"machine: load average {at_end[0]:.1f} {at_end[1]:.1f} {at_end[2]:.1f} at the end; bench process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", file=sys.stderr)
    RESULT.write()


def compare(vectors: np.ndarray, texts: list[str], labels: list[str], work: Path) -> None:
    np.save(work / "vectors.npy", vectors)
    peer = run_peer(work / "vectors.npy", work / "peer.npy")
    peer_points = np.load(work / "peer.npy")
    peer_trust = trust(vectors, peer_points)
    peer_agree = agreement(peer_points, labels)
    print(
        f"  plain umap-learn: {peer['seconds']:.1f} s ({load()}), trustworthiness {peer_trust:.4f}, "
        f"10-NN section agreement {peer_agree:.4f}, peak RSS {peer['peak_rss_mb']:.0f} MB",
        file=sys.stderr,
    )
    seconds, points, rss, quality = asyncio.run(run_ours(vectors, texts, work, "100k"))
    ours_trust = trust(vectors, points)
    ours_agree = agreement(points, labels)
    print(
        f"  job path: {seconds:.1f} s ({load()}), trustworthiness {ours_trust:.4f}, "
        f"10-NN section agreement {ours_agree:.4f} "
        f"(the job reported {quality['trustworthiness']:.4f} "
        f"on its own sample), PCA pre-reduction to {quality['pre_reduction_dimensions']} dims, "
        f"fitted on {quality['fitted_rows']} rows, service peak RSS {rss:.0f} MB",
        file=sys.stderr,
    )
    print(
        f"bench umap ratio={peer['seconds'] / seconds:.2f} seconds={seconds:.1f} trustworthiness={ours_trust:.4f} "
        f"agreement={ours_agree:.4f} peer_trustworthiness={peer_trust:.4f} peer_agreement={peer_agree:.4f}"
    )
    print(
        f"umap details: rows={len(vectors)} peer_seconds={peer['seconds']:.1f} peer_trustworthiness={peer_trust:.4f} "
        f"peer_peak_rss_mb={peer['peak_rss_mb']:.0f} service_peak_rss_mb={rss:.0f}"
    )
    RESULT.summary = f"bench umap ratio={peer['seconds'] / seconds:.2f} seconds={seconds:.1f}"
    RESULT.compare(
        f"{len(vectors):,} × {vectors.shape[1]} to 2-D", ours=seconds, peer=peer["seconds"], unit="s",
        ours_is="job path, CreateProjection to SUCCEEDED", peer_is="umap.UMAP().fit_transform", lower_is_better=True,
        trustworthiness=ours_trust, peer_trustworthiness=peer_trust, section_agreement=ours_agree,
        peer_section_agreement=peer_agree, ours_peak_rss_mb=rss, peer_peak_rss_mb=peer["peak_rss_mb"],
        fitted_rows=quality["fitted_rows"], pre_reduction_dims=quality["pre_reduction_dimensions"],
    )


if __name__ == "__main__":
    main()
