"""Key rotation and per-address login throttling, on a small stack of its own (auth,
ingest and the edge, on the session stack's PostgreSQL server in a database of their own
and its NATS, with no job workers) whose settings make the slow things short:

    EMBEDVIZ_KEY_RETENTION_SECONDS   a retired key stays in the JWKS this long
    EMBEDVIZ_KEY_RELOAD_SECONDS      auth looks at its key table this often
    EMBEDVIZ_JWKS_MAX_AGE            services trust a fetched JWKS this long
    EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS  a rotated key signs this long after it is published
    EMBEDVIZ_LOGIN_MAX_FAILURES_PER_ADDRESS
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import jwt
import pytest

from embedviz.v1 import auth_pb2, auth_pb2_grpc, ingest_pb2
from services.stack import Stack
from tests.edge.client import grpc_web_call
from tests.support.world import PASSWORD, bearer, eventually

pytestmark = pytest.mark.slow

RETENTION_S = 8
EDGE_JWKS_CACHE_S = 15  # envoy.yaml cache_duration; Envoy does not refetch on an unknown kid
PER_ADDRESS = 4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def short_stack(stack: Stack) -> Iterator[Stack]:
    database = f"rotation_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        connection = await asyncpg.connect(stack.pg_dsn)
        try:
            await connection.execute(f'CREATE DATABASE "{database}"')
        finally:
            await connection.close()

    asyncio.run(create())
    root = Path(tempfile.mkdtemp(prefix="embedviz-rotation-"))
    environ = {
        **os.environ,
        "EMBEDVIZ_DATABASE_URL": stack.database_url.rsplit("/", 1)[0] + f"/{database}",
        "EMBEDVIZ_NATS_URL": stack.nats_url,
        "EMBEDVIZ_WORKERS": "0",
        "EMBEDVIZ_KEY_RETENTION_SECONDS": str(RETENTION_S),
        "EMBEDVIZ_KEY_RELOAD_SECONDS": "1",
        "EMBEDVIZ_JWKS_MAX_AGE": "1",
        # 0: the new key signs at once, so this test needs no 30 s wait; publishing ahead
        # itself is tested in test_key_publish_ahead.py. The edge (Envoy) keeps its 15 s
        # JWKS cache here, hence the edge's longer waits below.
        "EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS": "0",
        "EMBEDVIZ_LOGIN_MAX_FAILURES_PER_ADDRESS": str(PER_ADDRESS),
    }
    small = Stack(root, components="auth,ingest,edge", ports="free", environ=environ)
    try:
        small.start()
        yield small
    finally:
        small.stop()


async def jwks_kids(small: Stack) -> set[str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{small.addrs['auth_http']}/.well-known/jwks.json") as resp:
            return {k["kid"] for k in (await resp.json())["keys"]}


async def edge_status(small: Stack, token: str) -> int | None:
    async with aiohttp.ClientSession() as session:
        reply = await grpc_web_call(
            session, small.edge_url, "/embedviz.v1.IngestService/ListProjects", b"", token=token
        )
    return reply.grpc_status


async def service_status(small: Stack, service: str, token: str) -> grpc.StatusCode:
    method = {"ingest": "/embedviz.v1.IngestService/ListProjects", "auth": "/embedviz.v1.AuthService/GetCurrentUser"}[
        service
    ]
    request = ingest_pb2.ListProjectsRequest() if service == "ingest" else auth_pb2.GetCurrentUserRequest()
    async with grpc.aio.insecure_channel(small.addrs[service]) as channel:
        call = channel.unary_unary(
            method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b
        )
        try:
            await call(request, metadata=bearer(token), timeout=20)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
async def auth(short_stack: Stack) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    async with grpc.aio.insecure_channel(short_stack.addrs["auth"]) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


async def test_a_token_from_before_a_rotation_works_until_its_key_leaves_the_jwks(
    short_stack: Stack, auth: auth_pb2_grpc.AuthServiceStub
) -> None:
    email = f"rot-{uuid.uuid4().hex[:8]}@example.org"
    before = (await auth.SignUp(auth_pb2.SignUpRequest(email=email, password=PASSWORD))).session.access_token
    old_kid = jwt.get_unverified_header(before)["kid"]
    assert await edge_status(short_stack, before) == 0

    rotated = subprocess.run(
        # the command reads the publish-ahead too: the same 0 as the stack's auth
        [sys.executable, "-m", "services.auth", "rotate-key"],
        env={**os.environ, **short_stack.service_env("auth"), "EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS": "0"},
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[3].rstrip(";")
    assert new_kid != old_kid and "stays in the JWKS" in rotated.stdout

    async def signs_with_the_new_key() -> str:
        token = (await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))).session.access_token
        assert jwt.get_unverified_header(token)["kid"] == new_kid
        return token

    after = await eventually(signs_with_the_new_key, timeout=10)
    assert await jwks_kids(short_stack) == {old_kid, new_kid}  # current and previous
    for token in (before, after):  # the services fetch the new key on its unknown kid
        assert await service_status(short_stack, "ingest", token) == grpc.StatusCode.OK
        assert await service_status(short_stack, "auth", token) == grpc.StatusCode.OK
    assert await edge_status(short_stack, before) == 0

    async def edge_accepts_after() -> None:  # with no publish-ahead: at the edge's next JWKS refresh
        assert await edge_status(short_stack, after) == 0

    await eventually(edge_accepts_after, timeout=EDGE_JWKS_CACHE_S + 5)

    async def old_key_gone() -> None:
        assert await jwks_kids(short_stack) == {new_kid}

    await eventually(old_key_gone, timeout=RETENTION_S + 10)

    async def before_is_refused() -> None:  # within the caches' max age (services 1 s here, the edge 15 s)
        assert await edge_status(short_stack, before) == 16
        assert await service_status(short_stack, "ingest", before) == grpc.StatusCode.UNAUTHENTICATED
        assert await service_status(short_stack, "auth", before) == grpc.StatusCode.UNAUTHENTICATED

    await eventually(before_is_refused, timeout=EDGE_JWKS_CACHE_S + 5)
    assert jwt.decode(before, options={"verify_signature": False})["exp"] > time.time(), (
        "refused for its key, not its age"
    )
    assert await edge_status(short_stack, after) == 0
    assert await service_status(short_stack, "ingest", after) == grpc.StatusCode.OK



async def test_with_publish_ahead_the_first_token_of_a_new_key_is_accepted_at_the_edge_at_once(
    short_stack: Stack, auth: auth_pb2_grpc.AuthServiceStub
) -> None:
    """The production arrangement: the new key is in the JWKS for longer than Envoy's 15 s
    cache before auth signs with it, so no user is ever refused for the rotation."""
    email = f"ahead-{uuid.uuid4().hex[:8]}@example.org"
    await auth.SignUp(auth_pb2.SignUpRequest(email=email, password=PASSWORD))
    rotated = subprocess.run(
        [sys.executable, "-m", "services.auth", "rotate-key"],
        env={
            **os.environ,
            **short_stack.service_env("auth"),
            "EMBEDVIZ_KEY_PUBLISH_AHEAD_SECONDS": str(EDGE_JWKS_CACHE_S + 5),
        },
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[3].rstrip(";")
    assert new_kid in await jwks_kids(short_stack)

    async def signs_with_the_new_key() -> str:
        token = (await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))).session.access_token
        assert jwt.get_unverified_header(token)["kid"] == new_kid
        return token

    first = await eventually(signs_with_the_new_key, timeout=EDGE_JWKS_CACHE_S + 15, every=0.5)
    assert await edge_status(short_stack, first) == 0, "the edge refused the first token of a pre-published key"

async def test_failed_logins_are_throttled_per_client_address(
    short_stack: Stack, auth: auth_pb2_grpc.AuthServiceStub
) -> None:
    """Different accounts, one address: the address runs out. The address is the last
    x-forwarded-for hop, the one the edge appends."""

    async def login(email: str, address: str) -> grpc.StatusCode:
        try:
            await auth.Login(auth_pb2.LoginRequest(email=email, password="wrong password"),
                             metadata=(("x-forwarded-for", f"198.51.100.99, {address}"),))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    codes = [await login(f"guess-{i}@example.org", "203.0.113.7") for i in range(PER_ADDRESS + 1)]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * PER_ADDRESS + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert await login("guess-x@example.org", "203.0.113.8") == grpc.StatusCode.UNAUTHENTICATED


async def test_a_forged_forwarded_for_at_the_edge_does_not_escape_the_address_throttle(short_stack: Stack) -> None:
    async def login(i: int) -> int | None:
        body = auth_pb2.LoginRequest(email=f"edge-{i}@example.org", password="wrong password").SerializeToString()
        async with aiohttp.ClientSession() as session:
            reply = await grpc_web_call(session, short_stack.edge_url, "/embedviz.v1.AuthService/Login", body,
                                        headers={"x-forwarded-for": f"192.0.2.{i}"})
        if reply.grpc_status == 8:
            assert "your network address" in reply.grpc_message and "try again in" in reply.grpc_message
        return reply.grpc_status

    codes = [await login(i) for i in range(PER_ADDRESS + 1)]
    assert codes == [16] * PER_ADDRESS + [8]
