"""Jobs outlive their tokens: import → embedding → map of 2,000 real rows on a
stack of its own whose delegated tokens live 3 s (EMBEDVIZ_DELEGATED_TOKEN_TTL) and
whose access tokens live 4 s, with the owner logged out while the jobs run. Each job is
held up mid-way for longer than a token is accepted (lifetime plus the services' 5 s
leeway): ingest is stopped (SIGSTOP) while the embedding reads rows, so a read arrives
with a token that has expired and is retried with a new one; the projection service is
stopped while it fits, so its later reads need a renewed token. Both end SUCCEEDED with
every row once. A job whose owner leaves the project, or whose owner's account is gone,
ends FAILED with a message that says so.

The stack: auth, ingest, embedding and projection with a NATS of their own (their
workers must not take the session stack's jobs, nor it theirs), in a database of their
own on the `infra` PostgreSQL server."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import jwt
import numpy as np
import pytest

from embedviz.v1 import auth_pb2, embedding_pb2, ingest_pb2, job_pb2, projection_pb2
from services.common.clients import INTERNAL_SECRET_HEADER
from services.stack import Stack
from tests.projection import debian
from tests.support.world import PASSWORD, Person, Stubs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not debian.packages(), reason="needs apt's package lists (apt-get update) for real text"),
]

TTL = 3  # seconds a delegated token lives here
ACCESS_TTL = 4  # seconds a user's access token lives here
LEEWAY = 5  # seconds past `exp` the services still accept a token (TokenVerifier)
PAUSE = TTL + LEEWAY + 4  # a job is held up this long: any token it held before is refused after
ROWS = 2000
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "logs" / "long-jobs"
FIT_STAGES = {"pre-reduction", "neighbours", "optimisation", "placing"}


@pytest.fixture(scope="module")
def short_lived(infra: Stack) -> Iterator[Stack]:
    database = f"long_jobs_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        connection = await asyncpg.connect(infra.pg_dsn)
        try:
            await connection.execute(f'CREATE DATABASE "{database}"')
        finally:
            await connection.close()

    asyncio.run(create())
    root = Path(tempfile.mkdtemp(prefix="embedviz-long-jobs-"))
    environ = {k: v for k, v in os.environ.items() if k != "EMBEDVIZ_NATS_URL"}
    environ.update(
        {
            "EMBEDVIZ_DATABASE_URL": infra.database_url.rsplit("/", 1)[0] + f"/{database}",
            "EMBEDVIZ_DELEGATED_TOKEN_TTL": str(TTL),
            "EMBEDVIZ_ACCESS_TOKEN_TTL": str(ACCESS_TTL),
            "EMBEDVIZ_WORKERS": "1",
            # Many short calls to ingest (one per 100 rows): the embedding reads rows all
            # through the job, not in one stream at its start.
            "EMBEDVIZ_EMBED_SHARD_ROWS": "1000",
            "EMBEDVIZ_EMBED_CHECKPOINT_ROWS": "100",
            "EMBEDVIZ_EMBED_DEVICE": "cpu",
        }
    )
    small = Stack(root, components="nats,auth,ingest,embedding,projection", ports="free", environ=environ)
    try:
        small.start()
        yield small
    finally:
        small.stop()
        if small.logs_dir.exists():
            shutil.rmtree(ARTIFACTS, ignore_errors=True)
            shutil.copytree(small.logs_dir, ARTIFACTS)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class World:
    stack: Stack
    stubs: Stubs
    owner: Person
    project: str
    dataset: str
    texts: list[str]

    async def login(self, who: Person) -> Person:
        """A fresh session for `who` (access tokens here live 4 s) in place of their last one,
        so `logout` leaves them with none."""
        previous = who.refresh_token
        response = await self.stubs.auth.Login(auth_pb2.LoginRequest(email=who.email, password=PASSWORD))
        who.token, who.refresh_token = response.session.access_token, response.session.refresh_token
        if previous:
            await self.stubs.auth.Logout(auth_pb2.LogoutRequest(refresh_token=previous), metadata=who.md)
        return who

    async def logout(self, who: Person) -> None:
        await self.stubs.auth.Logout(auth_pb2.LogoutRequest(refresh_token=who.refresh_token), metadata=who.md)

    async def live_sessions(self, who: Person) -> int:
        connection = await asyncpg.connect(self.stack.pg_dsn)
        try:
            return int(
                await connection.fetchval(
                    "SELECT count(*) FROM auth.sessions WHERE user_id = $1 AND NOT revoked AND NOT used "
                    "AND expire_time > now()",
                    uuid.UUID(who.user_id),
                )
            )
        finally:
            await connection.close()


def real_rows(count: int) -> list[dict[str, str]]:
    """Debian package summaries, spread over the whole list (every section)."""
    packages = debian.packages()
    step = max(1, len(packages) // count)
    chosen = packages[::step][:count]
    assert len(chosen) == count, f"apt knows only {len(packages)} packages"
    return [{"name": p.name, "section": p.section, "summary": p.summary} for p in chosen]


@pytest.fixture(scope="module")
async def world(short_lived: Stack) -> AsyncIterator[World]:
    stubs = Stubs(short_lived)
    try:
        # The table first: reading apt's package list can take longer than an access token
        # lives here (4 s), on a busy machine in a process that has not read it yet.
        table = real_rows(ROWS)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["name", "section", "summary"])
        writer.writeheader()
        writer.writerows(table)
        data = buffer.getvalue().encode()
        owner = await stubs.sign_up("owner")
        project = await stubs.make_project(owner, "long jobs")
        md = owner.md
        upload = await stubs.ingest.CreateUpload(
            ingest_pb2.CreateUploadRequest(
                parent=project, upload=ingest_pb2.Upload(filename="packages.csv", size_bytes=len(data))
            ),
            metadata=md,
        )
        await stubs.ingest.AppendUploadChunk(
            ingest_pb2.AppendUploadChunkRequest(name=upload.name, offset=0, data=data), metadata=md
        )
        dataset = await stubs.ingest.FinishUpload(ingest_pb2.FinishUploadRequest(name=upload.name), metadata=md)
        last = None
        async for update in stubs.ingest.WatchDataset(
            ingest_pb2.WatchDatasetRequest(name=dataset.name), metadata=md, timeout=120
        ):
            last = update.dataset
        assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last
        assert last.row_count == ROWS
        yield World(short_lived, stubs, owner, project, dataset.name, [r["summary"] for r in table])
    finally:
        await stubs.close()


@pytest.fixture(scope="module")
async def watcher(world: World) -> Person:
    """A viewer of the project who watches the jobs while their owner is logged out."""
    viewer = await world.stubs.sign_up("viewer")
    await world.stubs.add_member(await world.login(world.owner), world.project, viewer, ingest_pb2.ROLE_VIEWER)
    return viewer


class Paused:
    """A service process stopped (SIGSTOP) for a while, as if the job were slow there.

    With `until_stuck`, the while starts only once the job has stopped moving (`progress`,
    set by the caller, unchanged for STUCK_S): rows already read are embedded first, so the
    job's next call reaches the stopped service early in the hold, not near its end (on a
    loaded machine that took long enough that the call's token was still good afterwards).
    The stop itself comes SETTLE_S after the caller saw the job move: the embedding asks
    for its next window of rows just as it reports one done, and a call that ingest had
    already let in when it was stopped finishes OK afterwards, refused by no one."""

    STUCK_S = 5.0
    SETTLE_S = 0.6

    def __init__(self, stack: Stack, service: str) -> None:
        self.process = stack._procs[service]
        self.task: asyncio.Task[None] | None = None
        self.at = 0.0
        self.progress = 0

    def start(self, seconds: float, until_stuck: bool = False) -> None:
        async def stuck() -> None:
            seen, since = self.progress, time.monotonic()
            while time.monotonic() - since < self.STUCK_S:
                await asyncio.sleep(0.1)
                if self.progress != seen:
                    seen, since = self.progress, time.monotonic()

        async def hold() -> None:
            if until_stuck:
                await asyncio.sleep(self.SETTLE_S)
            self.process.send_signal(signal.SIGSTOP)
            try:
                if until_stuck:
                    await asyncio.wait_for(stuck(), 120)
                await asyncio.sleep(seconds)
            finally:
                self.process.send_signal(signal.SIGCONT)

        self.at = time.monotonic()
        self.task = asyncio.create_task(hold())

    async def done(self) -> None:
        if self.task is not None:
            await self.task


def seconds(job: job_pb2.Job) -> float:
    return job.end_time.ToMilliseconds() / 1000 - job.start_time.ToMilliseconds() / 1000


def log_of(stack: Stack, service: str) -> str:
    return (stack.logs_dir / f"{service}.log").read_text(errors="replace")


async def test_jobs_outlive_many_token_lifetimes_while_their_owner_is_logged_out(world: World, watcher: Person) -> None:
    stubs, owner = world.stubs, world.owner
    # Each job is started in a session that ends at once: the owner has none while it runs.
    await world.login(owner)
    embedding = await stubs.embedding.CreateEmbedding(
        embedding_pb2.CreateEmbeddingRequest(
            parent=world.dataset, embedding=embedding_pb2.Embedding(text_columns=["summary"])
        ),
        metadata=owner.md,
    )
    await world.logout(owner)
    assert await world.live_sessions(owner) == 0

    # Auth mints for the owner although none of their sessions is left: the job is theirs, not a session's.
    minted = await stubs.auth_internal.IssueDelegatedToken(
        auth_pb2.IssueDelegatedTokenRequest(user=owner.user),
        metadata=((INTERNAL_SECRET_HEADER, world.stack.env["EMBEDVIZ_INTERNAL_SECRET"]),),
    )
    claims = jwt.decode(minted.access_token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == TTL and claims["sub"] == owner.user_id

    refused = f"the token of {owner.user} was refused while reading rows"
    ingest = Paused(world.stack, "ingest")
    holds = 0
    await world.login(watcher)
    last = None
    async for update in stubs.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=embedding.name), metadata=watcher.md, timeout=600
    ):
        last = update.embedding
        ingest.progress = last.job.done
        running = last.job.state == job_pb2.JOB_STATE_RUNNING
        if ingest.task is None and running and 100 <= last.job.done <= ROWS // 3:
            # the next read of rows waits for ingest with a token that expires meanwhile
            ingest.start(PAUSE, until_stuck=True)
            holds = 1
        elif (
            ingest.task is not None and ingest.task.done() and holds < 3 and running
            and last.job.done <= ROWS - 400 and refused not in log_of(world.stack, "embedding")
        ):
            # the call held up had been let in before ingest stopped (a race with the stop): again
            ingest.start(PAUSE, until_stuck=True)
            holds += 1
    await ingest.done()
    assert ingest.task is not None, "the embedding ended before it could be held up"
    assert last is not None and last.job.state == job_pb2.JOB_STATE_SUCCEEDED, last.job.error
    assert last.row_count == ROWS and last.dimension == 384
    took = seconds(last.job)
    assert took >= 3 * TTL and took > TTL + LEEWAY, took
    # A read that ingest refused (its token expired while ingest stood still) was made again.
    assert refused in log_of(world.stack, "embedding"), f"{holds} holds"
    assert await world.live_sessions(owner) == 0

    await world.login(owner)
    projection = await stubs.projection.CreateProjection(
        projection_pb2.CreateProjectionRequest(
            parent=embedding.name,
            projection=projection_pb2.Projection(
                method=projection_pb2.PROJECTION_METHOD_UMAP,
                dimensions=2,
                seed=3,
                label_column="section",  # read from ingest after the fit, like the labels' texts
                clustering=projection_pb2.ClusterParams(algorithm=projection_pb2.CLUSTER_ALGORITHM_KMEANS, k=12),
            ),
        ),
        metadata=owner.md,
    )
    await world.logout(owner)

    fitter = Paused(world.stack, "projection")
    await world.login(watcher)
    stages: list[str] = []
    mapped = None
    async for watched in stubs.projection.WatchProjection(
        projection_pb2.WatchProjectionRequest(name=projection.name), metadata=watcher.md, timeout=600
    ):
        mapped = watched.projection
        if not stages or stages[-1] != mapped.job.stage:
            stages.append(mapped.job.stage)
        if fitter.task is None and mapped.job.stage in FIT_STAGES:
            fitter.start(PAUSE)  # the map's later reads (labels, texts) come after its first token is refused
    await fitter.done()
    assert fitter.task is not None, f"the map was never seen fitting: {stages}"
    assert mapped is not None and mapped.job.state == job_pb2.JOB_STATE_SUCCEEDED, (mapped.job.error, stages)
    # Short stages may pass between two events (Watch shows the latest state, not every
    # one); that the map got to its end after the fit, reading texts and labels as its
    # owner with renewed tokens, is what SUCCEEDED with a label column says.
    assert stages[-1] == "done" and "clustering" in stages, stages
    took = seconds(mapped.job)
    assert took >= 3 * TTL and took > TTL + LEEWAY, took
    assert await world.live_sessions(owner) == 0

    await world.login(owner)
    chunks = [
        c
        async for c in stubs.projection.StreamPoints(
            projection_pb2.StreamPointsRequest(name=projection.name), metadata=owner.md
        )
    ]
    indexes = np.concatenate([np.frombuffer(c.row_indexes, dtype="<u4") for c in chunks])
    assert sorted(indexes.tolist()) == list(range(ROWS))  # every row once
    print(
        f"\ndelegated token {TTL} s: embedding {seconds(last.job):.1f} s ({seconds(last.job) / TTL:.1f} lifetimes), "
        f"map {took:.1f} s ({took / TTL:.1f} lifetimes); held up {PAUSE} s each"
    )


async def start_embedding(world: World, who: Person) -> str:
    made = await world.stubs.embedding.CreateEmbedding(
        embedding_pb2.CreateEmbeddingRequest(
            parent=world.dataset, embedding=embedding_pb2.Embedding(text_columns=["summary"])
        ),
        metadata=(await world.login(who)).md,
    )
    return made.name


async def watch_until_running_then(world: World, name: str, act) -> tuple[embedding_pb2.Embedding, float]:  # type: ignore[no-untyped-def]
    """Watch as the project's owner; once the job is running with rows done, `act()`.
    Returns the last state and the seconds from `act` to the end."""
    acted_at = 0.0
    last = None
    async for update in world.stubs.embedding.WatchEmbedding(
        embedding_pb2.WatchEmbeddingRequest(name=name), metadata=(await world.login(world.owner)).md, timeout=300
    ):
        last = update.embedding
        if not acted_at and last.job.state == job_pb2.JOB_STATE_RUNNING and last.job.done >= 100:
            await act()
            acted_at = time.monotonic()
    assert acted_at, "the job ended before the change"
    assert last is not None
    return last, time.monotonic() - acted_at


async def test_a_job_whose_owner_leaves_the_project_fails_saying_so(world: World) -> None:
    editor = await world.stubs.sign_up("editor")
    member = await world.stubs.add_member(await world.login(world.owner), world.project, editor, ingest_pb2.ROLE_EDITOR)
    name = await start_embedding(world, editor)

    async def remove() -> None:
        await world.stubs.ingest.DeleteMember(
            ingest_pb2.DeleteMemberRequest(name=member.name), metadata=(await world.login(world.owner)).md
        )

    last, after = await watch_until_running_then(world, name, remove)
    assert last.job.state == job_pb2.JOB_STATE_FAILED, last.job
    assert "not found" in last.job.error and f"this job runs as its owner ({editor.user})" in last.job.error
    assert "removed from the project" in last.job.error
    assert after < 30, after


async def test_a_job_whose_owner_has_no_account_any_more_fails_naming_them(world: World) -> None:
    editor = await world.stubs.sign_up("gone")
    await world.stubs.add_member(await world.login(world.owner), world.project, editor, ingest_pb2.ROLE_EDITOR)
    name = await start_embedding(world, editor)

    async def delete_account() -> None:  # there is no API for it: an administrator's DELETE
        connection = await asyncpg.connect(world.stack.pg_dsn)
        try:
            await connection.execute("DELETE FROM auth.users WHERE id = $1", uuid.UUID(editor.user_id))
        finally:
            await connection.close()

    last, after = await watch_until_running_then(world, name, delete_account)
    assert last.job.state == job_pb2.JOB_STATE_FAILED, last.job
    assert f"the owner of this job, {editor.user}, no longer has an account" in last.job.error
    assert after < TTL + 30, after  # at its next renewal, half a lifetime away


@pytest.mark.parametrize("given", ["soon", "1", "3601"])
async def test_auth_does_not_start_with_a_bad_delegated_token_lifetime(short_lived: Stack, given: str) -> None:
    env = {**os.environ, **short_lived.service_env("auth"), "EMBEDVIZ_DELEGATED_TOKEN_TTL": given}
    for name, port in (("EMBEDVIZ_AUTH_ADDR", 1), ("EMBEDVIZ_AUTH_HTTP_ADDR", 2)):  # never listened on: it stops before
        env[name] = f"127.0.0.1:{port}"
    started = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.auth", env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(started.communicate(), timeout=120)
    assert started.returncode != 0
    assert (
        f"EMBEDVIZ_DELEGATED_TOKEN_TTL must be a whole number of seconds from 2 to 3600 (got '{given}')" in out.decode()
    )
