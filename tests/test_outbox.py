"""The outbox and the reconciler, on a stack of their own (they stop nats-server and kill
ingest, and run the reconciler every second):

- a message committed with its change is published after a crash between the commit and
  the publish, exactly once, also when the crashed relay had already sent it;
- a dataset deleted while NATS is down, by an ingest process that is then SIGKILLed before
  it could publish, still takes its embeddings and projections with it once NATS and
  ingest are back;
- the reconciler removes an embedding and a projection written behind the services'
  backs for a parent already deleted, and blobs that no row owns (once older than the
  grace period), and keeps everything live and every fresh blob."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from sqlalchemy import func, select, text

from embedviz.v1 import embedding_pb2, ingest_pb2, projection_pb2
from services.common.db import Database
from services.common.events import WORK_STREAM, EventBus, work_subject
from services.common.outbox import MSG_ID_HEADER, Outbox, OutboxSettings, outbox_table
from services.stack import Stack
from tests.support.world import Stubs, eventually

TEST_SCHEMA = "outbox_test"
GRACE_S = 600


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="embedviz-outbox-"))
    root.chmod(0o755)
    environ = {**os.environ, "EMBEDVIZ_RECONCILE_INTERVAL_S": "1", "EMBEDVIZ_RECONCILE_GRACE_S": str(GRACE_S)}
    stack = Stack(root / "stack", components="postgres,nats,auth,ingest,embedding,projection", ports="free",
                  environ=environ)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        logs = Path(__file__).resolve().parents[1] / "test-artifacts" / "logs" / "outbox"
        shutil.rmtree(logs, ignore_errors=True)
        if stack.logs_dir.exists():
            shutil.copytree(stack.logs_dir, logs)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def stubs(own_stack: Stack) -> AsyncIterator[Stubs]:
    made = Stubs(own_stack)
    yield made
    await made.close()


@pytest.fixture
async def outbox_parts(own_stack: Stack) -> AsyncIterator[tuple[Database, EventBus]]:
    """The stack's PostgreSQL (a schema of the test's own, so no service's relay takes its
    messages) and its NATS (as admin)."""
    db = Database(own_stack.database_url)
    table = outbox_table(TEST_SCHEMA)
    async with db.engine.begin() as connection:
        await connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{TEST_SCHEMA}"'))
        await connection.run_sync(table.metadata.create_all)
    bus = await EventBus.connect(own_stack.nats_url, "outbox-test")
    try:
        yield db, bus
    finally:
        await bus.close()
        await db.close()


async def in_stream(bus: EventBus, subject: str) -> int:
    info = await bus.js.stream_info(WORK_STREAM, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def pending(db: Database) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(outbox_table(TEST_SCHEMA))) or 0)


async def relay_until_empty(outbox: Outbox, db: Database) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(outbox.relay(stop))
    try:
        async def sent() -> None:
            assert await pending(db) == 0

        await eventually(sent, timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_message_committed_before_a_crash_is_published_once_after_restart(
    outbox_parts: tuple[Database, EventBus],
) -> None:
    db, bus = outbox_parts
    kind = f"outbox-test-{uuid.uuid4().hex[:8]}"
    crashed = Outbox(db.sessions, bus, TEST_SCHEMA, OutboxSettings(poll=0.2))
    async with db.sessions() as session:
        await crashed.add_work(session, kind, {"id": "job-1"})
        await session.commit()
    # the process "died" here: its relay never ran; the message waits in the table
    assert await pending(db) == 1
    assert await in_stream(bus, work_subject(kind)) == 0

    restarted = Outbox(db.sessions, bus, TEST_SCHEMA, OutboxSettings(poll=0.2))
    await relay_until_empty(restarted, db)
    assert await in_stream(bus, work_subject(kind)) == 1

    # a transaction that rolls back sends nothing
    async with db.sessions() as session:
        await restarted.add_work(session, kind, {"id": "job-2"})
        await session.rollback()
    await relay_until_empty(restarted, db)
    assert await in_stream(bus, work_subject(kind)) == 1


async def test_a_message_sent_before_a_crash_is_not_sent_twice(outbox_parts: tuple[Database, EventBus]) -> None:
    db, bus = outbox_parts
    kind = f"outbox-test-{uuid.uuid4().hex[:8]}"
    outbox = Outbox(db.sessions, bus, TEST_SCHEMA, OutboxSettings(poll=0.2))
    async with db.sessions() as session:
        message_id = await outbox.add_work(session, kind, {"id": "job-1"})
        await session.commit()
    # the relay that died had published it but not yet deleted its row
    await bus.js.publish(
        work_subject(kind), b'{"id": "job-1"}', stream=WORK_STREAM, headers={MSG_ID_HEADER: message_id}
    )
    await relay_until_empty(outbox, db)
    assert await in_stream(bus, work_subject(kind)) == 1


async def test_a_dataset_deleted_while_nats_is_down_by_a_process_killed_before_publishing_still_cascades(
    own_stack: Stack, stubs: Stubs,
) -> None:
    owner = await stubs.sign_up("outbox")
    project = await stubs.make_project(owner)
    dataset = await stubs.make_dataset(owner, project, n_rows=40)
    embedding = await stubs.make_embedding(owner, dataset)
    projection = await stubs.make_projection(owner, embedding)
    dataset_id = dataset.rsplit("/", 1)[1]

    own_stack.kill("nats")
    try:
        await stubs.ingest.DeleteDataset(ingest_pb2.DeleteDatasetRequest(name=dataset), metadata=owner.md, timeout=60)
        connection = await asyncpg.connect(own_stack.pg_dsn)
        try:
            waiting = await connection.fetchval(
                "SELECT count(*) FROM ingest.outbox WHERE subject = $1", f"events.dataset-deleted.{dataset_id}"
            )
        finally:
            await connection.close()
        assert waiting == 1, "the deletion event should wait in ingest's outbox while NATS is away"
        own_stack.kill("ingest")  # a crash after the commit, before any publish
    finally:
        own_stack.restart("nats")
    own_stack.restart("ingest")

    async def everything_is_gone() -> None:
        for call in (
            stubs.embedding.GetEmbedding(embedding_pb2.GetEmbeddingRequest(name=embedding), metadata=owner.md),
            stubs.projection.GetProjection(projection_pb2.GetProjectionRequest(name=projection), metadata=owner.md),
        ):
            try:
                await call
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
            else:
                raise AssertionError("still there")
        assert not blob_dir(own_stack, "embeddings", embedding).exists()
        assert not blob_dir(own_stack, "projections", projection).exists()

    await eventually(everything_is_gone, timeout=60)


def blob_dir(stack: Stack, kind: str, name: str) -> Path:
    return Path(stack.blob_root) / kind / name.rsplit("/", 1)[1]


def make_old(path: Path) -> None:
    """Date `path` and everything in it two hours back, past the grace period."""
    then = time.time() - 2 * 3600
    for inner in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(inner, (then, then))


def stray(stack: Stack, key: str, old: bool) -> Path:
    """A blob no row owns, e.g. `datasets/{id}/rows.parquet`; `old`: dated past the grace period."""
    root = Path(stack.blob_root)
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind")
    if old:
        make_old(root.joinpath(*key.split("/")[:2]))  # the entry the reconciler judges
    return path


async def copy_row(connection: asyncpg.Connection, table: str, row_id: str, **changes: str) -> str:
    """Insert a copy of a row with a new id and `changes` (behind the service's back)."""
    row = dict(await connection.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id))
    row.update(changes, id=uuid.uuid4().hex)
    columns = ", ".join('"' + column + '"' for column in row)
    places = ", ".join(f"${i + 1}" for i in range(len(row)))
    await connection.execute(f"INSERT INTO {table} ({columns}) VALUES ({places})", *row.values())
    return str(row["id"])


async def test_the_reconciler_removes_orphans_and_keeps_what_is_live(own_stack: Stack, stubs: Stubs) -> None:
    owner = await stubs.sign_up("reconcile")
    project = await stubs.make_project(owner)
    live_dataset = await stubs.make_dataset(owner, project, n_rows=40)
    live_embedding = await stubs.make_embedding(owner, live_dataset)
    live_projection = await stubs.make_projection(owner, live_embedding)
    doomed_dataset = await stubs.make_dataset(owner, project, n_rows=20)
    doomed_embedding = await stubs.make_embedding(owner, live_dataset)
    await stubs.ingest.DeleteDataset(ingest_pb2.DeleteDatasetRequest(name=doomed_dataset), metadata=owner.md)
    await stubs.embedding.DeleteEmbedding(
        embedding_pb2.DeleteEmbeddingRequest(name=doomed_embedding), metadata=owner.md
    )
    await asyncio.sleep(2)  # both deletion events were handled: what comes now only the reconciler sees

    live_embedding_id = live_embedding.rsplit("/", 1)[1]
    live_projection_id = live_projection.rsplit("/", 1)[1]
    connection = await asyncpg.connect(own_stack.pg_dsn)
    try:
        orphan_embedding = await copy_row(connection, "embedding.embeddings", live_embedding_id,
                                          dataset_id=doomed_dataset.rsplit("/", 1)[1])
        orphan_projection = await copy_row(connection, "projection.projections", live_projection_id,
                                           embedding_id=doomed_embedding.rsplit("/", 1)[1])
    finally:
        await connection.close()
    orphan_blobs = [
        stray(own_stack, f"datasets/{uuid.uuid4().hex}/rows.parquet", old=True),
        stray(own_stack, f"uploads/{uuid.uuid4().hex}.part", old=True),
        stray(own_stack, f"embeddings/{uuid.uuid4().hex}/vectors.arrow", old=True),
        stray(own_stack, f"projections/{uuid.uuid4().hex}/points.arrow", old=True),
    ]
    fresh_blobs = [
        stray(own_stack, f"datasets/{uuid.uuid4().hex}/rows.next.parquet", old=False),
        stray(own_stack, f"uploads/{uuid.uuid4().hex}.part", old=False),
    ]
    live_dirs = [
        blob_dir(own_stack, "datasets", live_dataset),
        blob_dir(own_stack, "embeddings", live_embedding),
        blob_dir(own_stack, "projections", live_projection),
    ]
    for path in live_dirs:
        assert path.exists(), path
        make_old(path)  # old, but owned: kept

    async def orphans_are_gone() -> None:
        connection = await asyncpg.connect(own_stack.pg_dsn)
        try:
            orphan_rows = (("embedding.embeddings", orphan_embedding), ("projection.projections", orphan_projection))
            for table, row_id in orphan_rows:
                assert await connection.fetchval(f"SELECT count(*) FROM {table} WHERE id = $1", row_id) == 0, table
        finally:
            await connection.close()
        for path in orphan_blobs:
            assert not path.exists(), path
            if path.parent.name != "uploads":
                assert not path.parent.exists(), path.parent

    await eventually(orphans_are_gone, timeout=30)
    for path in [*fresh_blobs, *live_dirs]:
        assert path.exists(), f"{path} was removed"
    kept = await stubs.embedding.GetEmbedding(embedding_pb2.GetEmbeddingRequest(name=live_embedding), metadata=owner.md)
    assert kept.name == live_embedding
    mapped = await stubs.projection.GetProjection(
        projection_pb2.GetProjectionRequest(name=live_projection), metadata=owner.md
    )
    assert mapped.name == live_projection


async def test_relays_and_reconcilers_stay_within_their_nats_permissions(own_stack: Stack) -> None:
    """Runs last: everything above published and reconciled as the services' own NATS users."""
    log = (own_stack.logs_dir / "nats.log").read_text(errors="replace")
    refused = [line for line in log.splitlines() if "Violation" in line and ":embedviz-" in line]
    assert not refused, "\n".join(refused[:5])
