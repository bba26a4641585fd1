"""NATS with a user per service (services/common/nats_access.py), on the stack's real
nats-server: no connection without credentials; each service may publish only its own
events and work (a forged dataset-deleted or embedding event is a permissions violation and
never reaches the stream); no service may change a stream or route stored messages into
another subject; each service process runs as its own user, and only auth holds the
key-encryption key. The whole path under these permissions: tests/test_whole_path.py,
tests/projection/test_follow_up_stack.py. deploy/nats/nats.conf grants the same."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, RePublish, StreamConfig
from nats.js.errors import NotFoundError

from services.auth import key_encryption
from services.common import nats_access
from services.common.events import EVENTS_STREAM, WORK_STREAM, inbox_prefix
from services.stack import Stack
from tests.support.world import eventually

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("auth", "ingest", "embedding", "projection")
# Every subject a service publishes on, and the one service that may.
OWNER = {
    "events.dataset.{id}": "ingest",
    "events.dataset-deleted.{id}": "ingest",
    "work.dataset": "ingest",
    "events.embedding.{id}": "embedding",
    "events.embedding-deleted.{id}": "embedding",
    "work.embedding": "embedding",
    "events.projection.{id}": "projection",
    "work.projection": "projection",
    "revocations.session.{id}": "auth",
}


class Connection:
    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=2)
        self.errors = errors

    async def refused(self, subject: str) -> None:
        """Wait for the server's permissions violation for `subject`."""

        async def reported() -> None:
            assert any(f'permissions violation for publish to "{subject.lower()}"' in e.lower() for e in self.errors), (
                self.errors
            )

        await eventually(reported, timeout=5, every=0.05)


@pytest.fixture
async def connect(stack: Stack) -> AsyncIterator[Callable[[str], Awaitable[Connection]]]:
    opened: list[Client] = []

    async def as_user(user: str) -> Connection:
        env = stack.service_env(user)
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            env["EMBEDVIZ_NATS_URL"], user=env["EMBEDVIZ_NATS_USER"], password=env["EMBEDVIZ_NATS_PASSWORD"],
            inbox_prefix=inbox_prefix(user), error_cb=on_error, allow_reconnect=False, max_reconnect_attempts=0,
        )
        opened.append(nc)
        return Connection(nc, errors)

    yield as_user
    for nc in opened:
        await nc.close()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Client]:
    nc = await nats.connect(stack.nats_url)  # the stack's own user, with every permission
    yield nc
    await nc.close()


async def stored(admin: Client, stream: str, subject: str) -> bool:
    try:
        await admin.jetstream().get_last_msg(stream, subject)
    except NotFoundError:
        return False
    return True


async def test_a_connection_without_credentials_or_with_a_wrong_password_is_refused(stack: Stack) -> None:
    url = stack.service_env("ingest")["EMBEDVIZ_NATS_URL"]
    assert "@" not in url
    for credentials in ({}, {"user": "ingest", "password": "not-the-password"}, {"user": "nobody", "password": "x"}):
        errors: list[str] = []

        async def on_error(exc: Exception, errors: list[str] = errors) -> None:
            errors.append(str(exc))

        with pytest.raises(Exception):  # noqa: B017 - nats-py raises its own kinds for each
            await nats.connect(url, **credentials, error_cb=on_error, allow_reconnect=False,
                               max_reconnect_attempts=0, connect_timeout=3)
        assert any("authorization violation" in e.lower() for e in errors), (credentials, errors)


async def test_ingest_cannot_publish_an_embedding_event(
    connect: Callable[[str], Awaitable[Connection]], admin: Client
) -> None:
    ingest = await connect("ingest")
    subject = f"events.embedding.{uuid.uuid4().hex}"
    with pytest.raises(nats.errors.TimeoutError):  # JetStream never saw it, so no acknowledgement
        await ingest.js.publish(subject, b"a finished embedding that never was", stream=EVENTS_STREAM)
    await ingest.refused(subject)
    assert not await stored(admin, EVENTS_STREAM, subject)


async def test_projection_cannot_publish_a_dataset_deleted_event(
    connect: Callable[[str], Awaitable[Connection]], admin: Client
) -> None:
    projection = await connect("projection")
    subject = f"events.dataset-deleted.{uuid.uuid4().hex}"
    with pytest.raises(nats.errors.TimeoutError):
        await projection.js.publish(subject, b'{"dataset": "projects/p/datasets/d"}', stream=EVENTS_STREAM)
    await projection.refused(subject)
    assert not await stored(admin, EVENTS_STREAM, subject)


async def test_each_service_publishes_only_its_own_events_and_work(
    connect: Callable[[str], Awaitable[Connection]],
) -> None:
    # The allowed ones are what the whole path does; here only the refusals, so no job is forged.
    for user in SERVICES:
        conn = await connect(user)
        for pattern, owner in OWNER.items():
            if owner == user:
                continue
            subject = pattern.format(id=uuid.uuid4().hex)
            await conn.nc.publish(subject, b"forged")
            await conn.nc.flush()
            await conn.refused(subject)


async def test_no_service_may_change_a_stream_to_republish_into_another_subject(
    connect: Callable[[str], Awaitable[Connection]], admin: Client
) -> None:
    """A stream's republish setting writes to any subject with the server's own rights, so
    only auth may create or change streams."""
    ingest = await connect("ingest")
    evil = StreamConfig(name=EVENTS_STREAM, subjects=["events.>"],
                        republish=RePublish(src="events.dataset.*", dest="work.projection"))
    with pytest.raises(nats.errors.TimeoutError):
        await ingest.js.update_stream(evil)
    await ingest.refused(f"$JS.API.STREAM.UPDATE.{EVENTS_STREAM}")
    with pytest.raises(nats.errors.TimeoutError):
        await ingest.js.delete_stream(WORK_STREAM)
    await ingest.refused(f"$JS.API.STREAM.DELETE.{WORK_STREAM}")
    info = await admin.jetstream().stream_info(EVENTS_STREAM)
    assert info.config.republish is None
    await admin.jetstream().stream_info(WORK_STREAM)  # still there


async def test_a_consumer_cannot_deliver_stored_events_into_a_work_queue(
    connect: Callable[[str], Awaitable[Connection]], admin: Client
) -> None:
    ingest = await connect("ingest")
    event = f"events.dataset.{uuid.uuid4().hex}"
    target = f"work.forged-{uuid.uuid4().hex[:8]}"  # no worker takes it, should it ever arrive
    await ingest.js.publish(event, b'{"id": "x", "owner": "users/someone-else"}', stream=EVENTS_STREAM)
    try:
        await ingest.js.add_consumer(EVENTS_STREAM, ConsumerConfig(deliver_subject=target, filter_subject=event))
    except Exception:  # noqa: BLE001 - refusing it outright is as good
        pass
    await asyncio.sleep(1.5)
    assert not await stored(admin, WORK_STREAM, target)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_each_service_runs_as_its_own_nats_user_and_only_auth_holds_the_key_encryption_key(stack: Stack) -> None:
    for name in SERVICES:
        env = _environ(stack._procs[name].pid)
        assert env["EMBEDVIZ_NATS_USER"] == name
        assert "@" not in env["EMBEDVIZ_NATS_URL"]  # not the stack's admin URL
        holds = {v for v in env if v.startswith("EMBEDVIZ_KEY_ENCRYPTION_KEY")}
        assert holds == ({key_encryption.ENV_FILE} if name == "auth" else set()), (name, holds)
    auth = _environ(stack._procs["auth"].pid)
    key_file = Path(auth[key_encryption.ENV_FILE])
    assert key_file.stat().st_mode & 0o077 == 0
    assert (stack.data_dir / "nats-passwords.json").stat().st_mode & 0o077 == 0
    assert (stack.data_dir / "nats.conf").stat().st_mode & 0o077 == 0


def test_deploy_nats_conf_grants_what_the_permissions_table_says() -> None:
    conf = (REPO / "deploy" / "nats" / "nats.conf").read_text()
    block = nats_access.authorization(lambda user: f"${nats_access.password_variable(user)}")
    assert block in conf, "deploy/nats/nats.conf is stale: paste `python -m services.common.nats_access` into it"
    env = {**os.environ, **{nats_access.password_variable(u): f"pw-{u}" for u in nats_access.USERS}}
    checked = subprocess.run(
        [_nats_server(), "-t", "-c", str(REPO / "deploy" / "nats" / "nats.conf")],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"configuration file .* is valid", checked.stdout + checked.stderr)


def _nats_server() -> str:
    import shutil
    import sys

    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    assert found, "nats-server not installed (make venv)"
    return found


def test_no_service_was_refused_anything_it_does(stack: Stack) -> None:
    """nats-server logs every permissions violation with the connection's name
    (`embedviz-<service>`): none of the services' own. Run after the whole path in the same
    session, this also covers what it did; a new subject or consumer without a line in
    services/common/nats_access.py shows up here by name."""
    log = (stack.logs_dir / "nats.log").read_text(errors="replace")
    refused = [line for line in log.splitlines() if "Violation" in line and ":embedviz-" in line]
    assert not refused, "\n".join(refused[:20])
