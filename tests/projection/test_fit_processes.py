"""Fits run in a child process of the projection service (services/projection/fits.py):
a cancel kills it, so the CPU of the service's processes drops to idle within 2 s
(measured from /proc, printed); a SIGTERM to the service leaves no child behind and hands
the job back to the queue; a child killed from outside fails the job with a clear
message, and the next map gets a new child.

The service runs as a real process (`python -m services.projection`, API and one worker)
against real PostgreSQL and NATS, with stand-ins for auth, ingest and embedding."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedviz.v1 import ingest_pb2, job_pb2, projection_pb2, projection_pb2_grpc
from services.stack import Stack
from tests.projection import standins
from tests.projection.standins import auth

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "projects/fits"
DATASET = f"{PROJECT}/datasets/d"
EMBEDDING = f"{DATASET}/embeddings/e"
OWNER = standins.new_user()
ROWS = 4000  # 384-d
# Fits that last: with 400 neighbours (UMAP) or perplexity 300 (t-SNE, 900 neighbours) a fit
# of these rows takes 10-13 s on 2 quiet cores, so a cancel or kill lands inside it.
LONG_UMAP = {"umap": projection_pb2.UmapParams(n_neighbors=400)}
LONG_TSNE = {"tsne": projection_pb2.TsneParams(perplexity=300)}
TICK = os.sysconf("SC_CLK_TCK")
IDLE_CPU_SECONDS = 0.3  # at most this much CPU in the second that follows the first 2 s after a cancel

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Setup:
    env: dict[str, str]
    address: str
    logs: Path


@pytest_asyncio.fixture(scope="module")
async def setup(infra: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    rng = np.random.default_rng(11)
    truth = rng.integers(0, 12, size=ROWS)
    vectors = (rng.normal(size=(12, 384))[truth] * 2 + rng.normal(size=(ROWS, 384))).astype(np.float32)
    world = standins.World(project=PROJECT, roles={OWNER: ingest_pb2.ROLE_OWNER})
    world.datasets[DATASET] = standins.Dataset(pa.table({"text": [f"topic{t} words here" for t in truth]}))
    world.embeddings[EMBEDDING] = (DATASET, vectors, job_pb2.JOB_STATE_SUCCEEDED, ["text"])
    others, address = await standins.serve(world)
    jwks, jwks_url = await standins.serve_jwks()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path_factory.mktemp("data")
    env = {
        **os.environ,
        "EMBEDVIZ_DATA_DIR": str(data),
        "EMBEDVIZ_DATABASE_URL": infra.database_url,
        "EMBEDVIZ_NATS_URL": infra.nats_url,
        "EMBEDVIZ_BLOB_ROOT": str(data / "blobs"),
        "EMBEDVIZ_INGEST_ADDR": address,
        "EMBEDVIZ_AUTH_ADDR": address,
        "EMBEDVIZ_EMBEDDING_ADDR": address,
        "EMBEDVIZ_PROJECTION_ADDR": f"127.0.0.1:{port}",
        "EMBEDVIZ_LISTEN_HOST": "127.0.0.1",
        "EMBEDVIZ_JWKS_URL": jwks_url,
        "EMBEDVIZ_INTERNAL_SECRET": "test-secret",
        "EMBEDVIZ_WORKERS": "1",
        # no warm-up: the first UMAP compiles numba inside the fit, which keeps the child busy for long
        "EMBEDVIZ_PROJECTION_WARM_UP": "0",
    }
    try:
        yield Setup(env, f"127.0.0.1:{port}", tmp_path_factory.mktemp("logs"))
    finally:
        await others.stop(1)
        await jwks.cleanup()


@dataclasses.dataclass
class Service:
    process: subprocess.Popen[bytes]
    stub: projection_pb2_grpc.ProjectionServiceStub
    channel: grpc.aio.Channel


@pytest.fixture
def services(setup: Setup) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        if service.process.poll() is None:
            service.process.terminate()
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()


async def start_service(setup: Setup, started: list[Service]) -> Service:
    log = open(setup.logs / f"service-{len(started)}.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [sys.executable, "-m", "services.projection"], cwd=ROOT, env=setup.env, stdout=log, stderr=subprocess.STDOUT
    )
    channel = grpc.aio.insecure_channel(setup.address)
    service = Service(process, projection_pb2_grpc.ProjectionServiceStub(channel), channel)
    started.append(service)
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(600):
        assert process.poll() is None, f"the service exited with {process.returncode}; see {log.name}"
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING and fitting_children(process.pid):
                return service
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the projection service did not start serving with a fitting process within 60 s")


# --- /proc ----------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, state, CPU seconds: user + system) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                parents[int(entry)] = stat[0]
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"


def fitting_children(pid: int) -> list[int]:
    result = []
    for child in descendants(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"services.projection.fits" in f.read() and alive(child):
                    result.append(child)
        except FileNotFoundError:
            pass
    return result


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of the process and each live descendant (not counting reaped children)."""
    result = {}
    for p in [pid, *descendants(pid)]:
        stat = _stat(p)
        if stat is not None and stat[1] != "Z":
            result[p] = stat[2]
    return result


def job_folders(setup: Setup) -> list[Path]:
    """Folders of running fits: <cache>/fits/<service process>/<job>."""
    root = Path(setup.env["EMBEDVIZ_DATA_DIR"]) / "cache" / "projection" / "fits"
    return [job for process in root.glob("*") if process.is_dir() for job in process.iterdir() if job.is_dir()]


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two samples by the processes alive at the second one."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


# --- the API --------------------------------------------------------------------------------


async def create(service: Service, method: int, **spec: object) -> projection_pb2.Projection:
    return await service.stub.CreateProjection(
        projection_pb2.CreateProjectionRequest(
            parent=EMBEDDING, projection=projection_pb2.Projection(method=method, **spec)  # type: ignore[arg-type]
        ),
        metadata=auth(OWNER),
    )


async def get(service: Service, name: str) -> projection_pb2.Projection:
    return await service.stub.GetProjection(projection_pb2.GetProjectionRequest(name=name), metadata=auth(OWNER))


async def fitting(service: Service, name: str, stages: tuple[str, ...], cpu_seconds: float = 2.0) -> int:
    """Wait until the job is in one of `stages` and its child has used `cpu_seconds` of CPU
    on it; the child's pid."""
    deadline = time.monotonic() + 300
    seen: list[str] = []
    while time.monotonic() < deadline:
        current = await get(service, name)
        if not seen or seen[-1] != current.job.stage:
            seen.append(current.job.stage)
        assert current.job.state in (job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_RUNNING), (seen, current.job.error)
        children = fitting_children(service.process.pid)
        if current.job.stage in stages and children:
            stat = _stat(children[0])
            if stat is not None and stat[2] >= cpu_seconds:
                return children[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"the fit did not get going; stages seen: {seen}")


async def finished(service: Service, name: str, timeout: float = 300) -> projection_pb2.Projection:
    last = None
    async for update in service.stub.WatchProjection(
        projection_pb2.WatchProjectionRequest(name=name), metadata=auth(OWNER), timeout=timeout
    ):
        last = update.projection
    assert last is not None
    return last


async def cancel_and_measure(setup: Setup, service: Service, name: str, child: int, what: str) -> None:
    pid = service.process.pid
    # the fit must be computing when it is cancelled: a second in which the tree used a
    # quarter of a core (on a loaded machine a fit gets a small share; up to 10 tries)
    windows: list[float] = []
    while len(windows) < 10:
        before = tree_cpu(pid)
        await asyncio.sleep(1.0)
        windows.append(busy := cpu_between(before, tree_cpu(pid)))
        if busy > 0.25:
            break
    assert busy > 0.25, f"the {what} fit was not using the CPU before the cancel (CPU s per 1 s: {windows})"

    samples = [(0.0, tree_cpu(pid))]
    began = time.monotonic()
    cancelled = await service.stub.CancelProjection(
        projection_pb2.CancelProjectionRequest(name=name), metadata=auth(OWNER)
    )
    assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
    gone_after = None
    while time.monotonic() - began < 3.0:
        await asyncio.sleep(0.1)
        now = time.monotonic() - began
        samples.append((now, tree_cpu(pid)))
        if gone_after is None and not alive(child):
            gone_after = now
    at_2 = next(sample for t, sample in samples if t >= 2.0)
    idle_cpu = cpu_between(at_2, samples[-1][1])
    per_interval = [
        (round(t1, 2), round(cpu_between(s0, s1), 3)) for (_, s0), (t1, s1) in zip(samples, samples[1:], strict=False)
    ]
    # latency: the end of the last 0.1 s interval in which the tree used more than 0.05 s of CPU
    busy_until = max((t for t, used in per_interval if used > 0.05), default=0.0)
    print(
        f"\n{what} cancel: fitting child {child} gone after {gone_after} s; CPU busy until {busy_until:.2f} s; "
        f"CPU {idle_cpu:.3f} s from 2 s to {samples[-1][0]:.2f} s after the cancel (was {busy:.2f} s per second "
        f"before); per 0.1 s: {per_interval}"
    )
    assert gone_after is not None and gone_after <= 2.0, f"the fitting process {child} still runs 2 s after the cancel"
    assert idle_cpu < IDLE_CPU_SECONDS, f"{idle_cpu:.2f} s of CPU in the second after the first 2 s: {per_interval}"
    assert busy_until <= 2.0, per_interval
    done = await finished(service, name, timeout=30)
    assert done.job.state == job_pb2.JOB_STATE_CANCELLED
    assert job_folders(setup) == []  # the job's arrays are gone with it


async def test_cancel_of_a_running_umap_and_tsne_stops_the_cpu_within_2_s(
    setup: Setup, services: list[Service]
) -> None:
    service = await start_service(setup, services)
    umap = await create(service, projection_pb2.PROJECTION_METHOD_UMAP, **LONG_UMAP)
    child = await fitting(service, umap.name, ("neighbours", "optimisation"))
    assert len(job_folders(setup)) == 1
    await cancel_and_measure(setup, service, umap.name, child, "UMAP")

    tsne = await create(service, projection_pb2.PROJECTION_METHOD_TSNE, **LONG_TSNE)
    child = await fitting(service, tsne.name, ("optimisation",))
    await cancel_and_measure(setup, service, tsne.name, child, "t-SNE")


async def test_a_fitting_process_killed_from_outside_fails_the_job_and_the_next_map_gets_a_new_one(
    setup: Setup, services: list[Service]
) -> None:
    service = await start_service(setup, services)
    tsne = await create(service, projection_pb2.PROJECTION_METHOD_TSNE, **LONG_TSNE)
    child = await fitting(service, tsne.name, ("optimisation",), cpu_seconds=1.0)
    os.kill(child, signal.SIGKILL)
    began = time.monotonic()
    done = await finished(service, tsne.name, timeout=30)
    print(
        f"\nfitting process killed from outside: the job ended {job_pb2.JobState.Name(done.job.state)} "
        f"after {time.monotonic() - began:.2f} s: {done.job.error}"
    )
    assert done.job.state == job_pb2.JOB_STATE_FAILED
    assert "killed by SIGKILL" in done.job.error and "optimisation" in done.job.error, done.job.error
    assert job_folders(setup) == []

    pca = await create(service, projection_pb2.PROJECTION_METHOD_PCA, seed=1)
    done = await finished(service, pca.name)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED, done.job.error
    assert done.point_count == ROWS
    assert fitting_children(service.process.pid) and child not in fitting_children(service.process.pid)


async def test_sigterm_mid_fit_leaves_no_child_and_hands_the_job_back(setup: Setup, services: list[Service]) -> None:
    first = await start_service(setup, services)
    umap = await create(first, projection_pb2.PROJECTION_METHOD_UMAP, **LONG_UMAP)
    child = await fitting(first, umap.name, ("neighbours", "optimisation"), cpu_seconds=1.0)
    family = descendants(first.process.pid)
    assert child in family
    began = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.process.wait, 30)
    print(f"\nSIGTERM mid-fit: the service exited with {code} after {time.monotonic() - began:.2f} s")
    assert code == 0
    left = [pid for pid in family if alive(pid)]
    assert not left, f"processes of the stopped service still run: {left}"
    assert job_folders(setup) == []
    await first.channel.close()

    # the job went back to the queue, not to FAILED: the next service takes it up again
    second = await start_service(setup, services)
    current = await get(second, umap.name)
    assert current.job.state in (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_PENDING), current.job.error
    await fitting(second, umap.name, ("pre-reduction", "neighbours", "optimisation"), cpu_seconds=0.5)
    await second.stub.CancelProjection(projection_pb2.CancelProjectionRequest(name=umap.name), metadata=auth(OWNER))
    done = await finished(second, umap.name, timeout=30)
    assert done.job.state == job_pb2.JOB_STATE_CANCELLED
