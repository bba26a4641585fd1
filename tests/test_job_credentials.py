"""The credentials a worker holds for a job (`services.common.clients.JobCredentials`):
the token is renewed at half its lifetime, a call refused as UNAUTHENTICATED is made once
more with a newly minted token, and a second refusal is a clear error. Over real gRPC: a
small auth server that mints ES256 tokens the way auth does, and a neighbour that checks
them with the services' own `TokenVerifier`. The clock of the tokens is the test's, so
renewal is checked to the second without waiting."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.timestamp_pb2 import Timestamp

from embedviz.v1 import auth_pb2, auth_pb2_grpc
from services.auth.keys import delegated_token_ttl
from services.common import errors
from services.common.auth import Identity, TokenVerifier, bearer_token
from services.common.clients import INTERNAL_SECRET_HEADER, DelegatedTokens, JobCredentials

ISSUER = "embedviz-auth"
AUDIENCE = "embedviz-internal"
SECRET = "test-internal-secret"
KID = "test-key"
LIFETIME = 10  # seconds a minted token lives
OWNER = f"users/{uuid.uuid4()}"
WHO_AM_I = "/test.Neighbour/WhoAmI"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    clock: Clock
    tokens: DelegatedTokens
    neighbour: grpc.aio.Channel
    minted: list[str] = field(default_factory=list)  # every token auth handed out
    seen: list[str] = field(default_factory=list)  # every token the neighbour was shown
    refuse: set[str] = field(default_factory=set)  # tokens the neighbour refuses
    refuse_all: bool = False
    known_users: set[str] = field(default_factory=lambda: {OWNER})

    async def who_am_i(self, identity: Identity) -> str:
        """A call to the neighbour with this identity: the subject it saw."""
        call = self.neighbour.unary_unary(WHO_AM_I, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        reply: bytes = await call(b"", metadata=identity.metadata(), timeout=5)
        return reply.decode()


class Auth(auth_pb2_grpc.AuthInternalServiceServicer):
    """Mints like services/auth/accounts.py: ES256, internal audience, iat/exp whole seconds."""

    def __init__(self, world: World, key: ec.EllipticCurvePrivateKey) -> None:
        self.world = world
        self.key = key

    async def IssueDelegatedToken(
        self, request: auth_pb2.IssueDelegatedTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.IssueDelegatedTokenResponse:
        if dict(context.invocation_metadata()).get(INTERNAL_SECRET_HEADER) != SECRET:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no internal secret")
        if request.user not in self.world.known_users:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.user} not found")
        now = int(time.time())
        token = jwt.encode(
            {
                "iss": ISSUER, "aud": AUDIENCE, "sub": request.user.removeprefix("users/"),
                "iat": now, "nbf": now, "exp": now + LIFETIME, "jti": uuid.uuid4().hex,
            },
            self.key, algorithm="ES256", headers={"kid": KID},
        )
        self.world.minted.append(token)
        return auth_pb2.IssueDelegatedTokenResponse(
            access_token=token, access_token_expire_time=Timestamp(seconds=now + LIFETIME)
        )


def neighbour_handler(world: World, verifier: TokenVerifier) -> grpc.GenericRpcHandler:
    async def who_am_i(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        token = bearer_token(tuple(context.invocation_metadata() or ())) or ""
        world.seen.append(token)
        if world.refuse_all or token in world.refuse:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the access token has expired; refresh the session")
        try:
            identity = await verifier.verify(token)
        except errors.Unauthenticated as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        return identity.user.encode()

    return grpc.method_handlers_generic_handler(
        "test.Neighbour",
        {
            "WhoAmI": grpc.unary_unary_rpc_method_handler(
                who_am_i, request_deserializer=lambda b: b, response_serializer=lambda b: b
            )
        },
    )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = jwt.PyJWK(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": KID, "alg": "ES256"})

    async def keys(kid: str) -> jwt.PyJWK | None:
        return public if kid == KID else None

    verifier = TokenVerifier(keys, ISSUER, [AUDIENCE])
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    clock = Clock()
    auth_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    neighbour = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    w = World(clock, DelegatedTokens(auth_channel, SECRET, verifier, clock=clock), neighbour)
    auth_pb2_grpc.add_AuthInternalServiceServicer_to_server(Auth(w, key), server)
    server.add_generic_rpc_handlers((neighbour_handler(w, verifier),))
    await server.start()
    try:
        yield w
    finally:
        await auth_channel.close()
        await neighbour.close()
        await server.stop(None)


async def test_the_token_is_kept_until_half_its_lifetime_then_renewed(world: World) -> None:
    credentials = world.tokens.for_job(OWNER)
    first = await credentials.identity()
    assert first.user == OWNER
    world.clock.now += LIFETIME / 2 - 0.5
    assert (await credentials.identity()).token == first.token
    assert len(world.minted) == 1
    world.clock.now += 1.0  # past half the lifetime: renewed before it could expire
    second = await credentials.identity()
    assert second.token != first.token and len(world.minted) == 2
    assert await world.who_am_i(second) == OWNER


async def test_every_call_of_a_long_job_gets_a_token_with_half_its_lifetime_left(world: World) -> None:
    credentials = world.tokens.for_job(OWNER)
    minted_at: dict[str, float] = {}
    for _ in range(40):  # a job of 4 lifetimes, one call every quarter of a lifetime
        identity = await credentials.identity()
        minted_at.setdefault(identity.token, world.clock.now)
        assert world.clock.now - minted_at[identity.token] < LIFETIME / 2
        assert await credentials.call(world.who_am_i) == OWNER
        world.clock.now += LIFETIME / 4
    assert len(world.minted) == 20  # a new token every half lifetime, no more


async def test_jobs_of_one_owner_share_the_token(world: World) -> None:
    one, other = world.tokens.for_job(OWNER), world.tokens.for_job(OWNER)
    assert (await one.identity()).token == (await other.identity()).token
    assert len(world.minted) == 1


@pytest.mark.parametrize("form", ["grpc", "domain"])
async def test_a_call_refused_as_unauthenticated_is_made_once_more_with_a_new_token(world: World, form: str) -> None:
    credentials = world.tokens.for_job(OWNER)
    stale = await credentials.identity()
    world.refuse.add(stale.token)  # e.g. auth's clock ran ahead, or the neighbour lost its keys

    async def call(identity: Identity) -> str:
        try:
            return await world.who_am_i(identity)
        except grpc.aio.AioRpcError as exc:
            if form == "domain" and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise errors.Unauthenticated(exc.details() or "") from None  # as services/projection/sources.py does
            raise

    assert await credentials.call(call, "asking who I am") == OWNER
    assert world.seen == [stale.token, world.minted[-1]]
    assert len(world.minted) == 2
    assert (await credentials.identity()).token == world.minted[-1]  # the new token is kept


async def test_a_second_refusal_is_a_clear_failure(world: World) -> None:
    credentials = world.tokens.for_job(OWNER)
    world.refuse_all = True
    with pytest.raises(errors.Unauthenticated) as raised:
        await credentials.call(world.who_am_i, "reading rows 0 to 100 of projects/p/datasets/d")
    message = raised.value.message
    assert "refused twice while reading rows 0 to 100 of projects/p/datasets/d" in message
    assert OWNER in message and "the access token has expired" in message
    assert len(world.seen) == 2 and world.seen[0] != world.seen[1]  # exactly one retry, with a new token


async def test_other_errors_are_not_retried(world: World) -> None:
    credentials = world.tokens.for_job(OWNER)
    calls = 0

    async def missing(identity: Identity) -> str:
        nonlocal calls
        calls += 1
        raise errors.NotFound("projects/p/datasets/d not found")

    with pytest.raises(errors.NotFound) as raised:
        await credentials.call(missing)
    assert calls == 1 and len(world.minted) == 1
    # The owner may have left the project since the job started: the message says whose access it was.
    assert raised.value.message.startswith("projects/p/datasets/d not found; this job runs as its owner")
    assert OWNER in raised.value.message and "removed from the project" in raised.value.message


async def test_calls_refused_together_share_one_new_token(world: World) -> None:
    credentials = world.tokens.for_job(OWNER)
    stale = await credentials.identity()
    first = await world.tokens.renewed(OWNER, stale)
    second = await world.tokens.renewed(OWNER, stale)  # the other call saw the same stale token
    assert first.token == second.token != stale.token
    assert len(world.minted) == 2


async def test_a_job_whose_owner_has_no_account_fails_with_a_message_naming_them(world: World) -> None:
    gone = f"users/{uuid.uuid4()}"
    with pytest.raises(errors.FailedPrecondition, match=f"the owner of this job, {gone}, no longer has an account"):
        await world.tokens.for_job(gone).call(world.who_am_i)
    assert world.seen == []


async def test_auth_out_of_reach_is_unavailable_so_the_job_is_tried_again() -> None:
    async def no_keys(kid: str) -> jwt.PyJWK | None:
        return None

    async with grpc.aio.insecure_channel("127.0.0.1:1") as nowhere:
        credentials = JobCredentials(
            DelegatedTokens(nowhere, SECRET, TokenVerifier(no_keys, ISSUER, [AUDIENCE])), OWNER
        )
        with pytest.raises(errors.Unavailable, match="auth service is not reachable"):
            await credentials.identity()


@pytest.mark.parametrize("given", ["", "2", "600", "3600"])
def test_the_delegated_token_lifetime_is_a_setting(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("EMBEDVIZ_DELEGATED_TOKEN_TTL", given)
    assert delegated_token_ttl() == (int(given) if given else 600)


@pytest.mark.parametrize("given", ["soon", "1.5", "1", "0", "-5", "3601"])
def test_a_bad_delegated_token_lifetime_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("EMBEDVIZ_DELEGATED_TOKEN_TTL", given)
    with pytest.raises(
        ValueError, match=r"EMBEDVIZ_DELEGATED_TOKEN_TTL must be a whole number of seconds from 2 to 3600"
    ):
        delegated_token_ttl()
