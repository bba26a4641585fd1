"""Token attacks against the real stack, each refused at the edge (grpc-web, status 16)
and at every service called directly (UNAUTHENTICATED); refresh-token reuse and logout;
delegated worker tokens that can act only for their user; and the edge conformance
suite run against the Envoy edge in front of the real services, with a real key."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from embedviz.v1 import auth_pb2, embedding_pb2, ingest_pb2, projection_pb2
from services.stack import Stack
from tests.edge.client import grpc_web_call
from tests.edge.conformance import CHECKS, EdgeTarget, checks_for
from tests.edge.tokens import TokenMint
from tests.support.world import Person, Stubs, bearer, signing_keys

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
SECRET_HEADER = "x-embedviz-internal-secret"

ATTACKS = [
    "no token", "garbage", "expired", "not yet valid", "wrong issuer", "wrong audience", "alg none",
    "hs256 with the public key", "unknown kid", "known kid, other key", "payload edited",
]

# One cheap authenticated call per service, straight to its port.
SERVICE_CALLS = {
    "auth": ("/embedviz.v1.AuthService/GetCurrentUser", auth_pb2.GetCurrentUserRequest()),
    "ingest": ("/embedviz.v1.IngestService/ListProjects", ingest_pb2.ListProjectsRequest()),
    "embedding": ("/embedviz.v1.EmbeddingService/ListModels", embedding_pb2.ListModelsRequest()),
    "projection": ("/embedviz.v1.ProjectionService/GetProjection",
                   projection_pb2.GetProjectionRequest(name="projects/p/datasets/d/embeddings/e/projections/x")),
}


@pytest.fixture(scope="module")
async def stubs(stack: Stack) -> AsyncIterator[Stubs]:
    s = Stubs(stack)
    yield s
    await s.close()


@pytest.fixture(scope="module")
async def person(stubs: Stubs) -> Person:
    return await stubs.sign_up("tokens")


@pytest.fixture(scope="module")
async def mint(stack: Stack, person: Person) -> TokenMint:
    """Signs with the auth service's real current key, for a real user."""
    kid, pem = (await signing_keys(stack))[0]
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return TokenMint(key=key, kid=kid, subject=person.user_id)


def attack_token(mint: TokenMint, case: str) -> str | None:
    now = int(time.time())
    return {
        "no token": lambda: None,
        "garbage": lambda: "not-a-jwt",
        "expired": mint.expired,
        "not yet valid": mint.not_yet_valid,
        "wrong issuer": mint.wrong_issuer,
        "wrong audience": lambda: mint.token(aud="someone-else"),
        "alg none": mint.alg_none,
        "hs256 with the public key": mint.hs256_with_public_key,
        "unknown kid": mint.unknown_kid,
        "known kid, other key": mint.known_kid_other_key,
        "payload edited": lambda: mint.payload_edited(exp=now + 10**8),
    }[case]()


async def call_service(stack: Stack, service: str, token: str | None) -> grpc.StatusCode:
    method, request = SERVICE_CALLS[service]
    async with grpc.aio.insecure_channel(stack.addrs[service]) as channel:
        unary = channel.unary_unary(
            method, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b
        )
        try:
            await unary(request, metadata=bearer(token), timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def call_edge(
    stack: Stack, token: str | None, path: str = "/embedviz.v1.IngestService/ListProjects"
) -> tuple[int | None, str]:
    async with aiohttp.ClientSession() as session:
        reply = await grpc_web_call(session, stack.edge_url, path, b"", token=token)
    assert reply.http_status == 200, "auth failures must be grpc-web replies, not HTTP errors"
    return reply.grpc_status, reply.grpc_message


async def test_the_minted_token_itself_is_accepted_everywhere(stack: Stack, mint: TokenMint) -> None:
    """So the refusals below are about the attack, not about the test's key."""
    token = mint.valid()
    assert (await call_edge(stack, token))[0] == 0
    for service in ("auth", "ingest", "embedding"):
        assert await call_service(stack, service, token) == grpc.StatusCode.OK, service
    # projection answers NOT_FOUND for the made-up name: past authentication
    assert await call_service(stack, "projection", token) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("case", ATTACKS)
async def test_attack_is_refused_at_the_edge(stack: Stack, mint: TokenMint, case: str) -> None:
    status, message = await call_edge(stack, attack_token(mint, case))
    assert status == 16, (status, message)
    assert message


@pytest.mark.parametrize("service", list(SERVICE_CALLS))
@pytest.mark.parametrize("case", ATTACKS)
async def test_attack_is_refused_at_the_service(stack: Stack, mint: TokenMint, case: str, service: str) -> None:
    assert await call_service(stack, service, attack_token(mint, case)) == UNAUTHENTICATED


async def test_a_logged_out_sessions_refresh_token_is_refused(stubs: Stubs, stack: Stack) -> None:
    who = await stubs.sign_up("logout")
    await stubs.auth.Logout(auth_pb2.LogoutRequest(refresh_token=who.refresh_token), metadata=who.md)
    with pytest.raises(grpc.aio.AioRpcError) as direct:
        await stubs.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=who.refresh_token))
    assert direct.value.code() == UNAUTHENTICATED
    request = auth_pb2.RefreshSessionRequest(refresh_token=who.refresh_token).SerializeToString()
    async with aiohttp.ClientSession() as session:
        reply = await grpc_web_call(session, stack.edge_url, "/embedviz.v1.AuthService/RefreshSession", request)
    assert reply.grpc_status == 16, reply.grpc_message


async def test_a_reused_refresh_token_revokes_the_family_at_the_edge_too(stubs: Stubs, stack: Stack) -> None:
    who = await stubs.sign_up("reuse")
    path = "/embedviz.v1.AuthService/RefreshSession"

    async def refresh(token: str) -> tuple[int | None, bytes | None]:
        async with aiohttp.ClientSession() as session:
            reply = await grpc_web_call(session, stack.edge_url, path,
                                        auth_pb2.RefreshSessionRequest(refresh_token=token).SerializeToString())
        return reply.grpc_status, reply.messages[0] if reply.messages else None

    status, body = await refresh(who.refresh_token)
    assert status == 0 and body is not None
    rotated = auth_pb2.RefreshSessionResponse.FromString(body).session.refresh_token
    assert (await refresh(who.refresh_token))[0] == 16  # the thief (or the victim) replays the old one
    assert (await refresh(rotated))[0] == 16  # ... and the whole family is gone
    with pytest.raises(grpc.aio.AioRpcError) as direct:
        await stubs.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=rotated))
    assert direct.value.code() == UNAUTHENTICATED


async def test_logout_of_another_users_session_is_not_found(stubs: Stubs) -> None:
    alice, mallory = await stubs.sign_up("alice"), await stubs.sign_up("mallory")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.auth.Logout(auth_pb2.LogoutRequest(refresh_token=alice.refresh_token), metadata=mallory.md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    still = await stubs.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=alice.refresh_token))
    assert still.session.refresh_token


# --- delegated (worker) tokens: they act for one user only -------------------------------


async def delegated(stubs: Stubs, stack: Stack, who: Person) -> str:
    issued = await stubs.auth_internal.IssueDelegatedToken(
        auth_pb2.IssueDelegatedTokenRequest(user=who.user, ttl_seconds=120),
        metadata=((SECRET_HEADER, stack.env["EMBEDVIZ_INTERNAL_SECRET"]),),
    )
    return issued.access_token


async def test_a_worker_acting_for_one_user_cannot_read_another_users_data(stubs: Stubs, stack: Stack) -> None:
    alice, bob = await stubs.sign_up("alice"), await stubs.sign_up("bob")
    bobs = await stubs.make_project(bob, "bob's")
    bobs_dataset = await stubs.make_dataset(bob, bobs, n_rows=20)
    alices = await stubs.make_project(alice, "alice's")
    alices_dataset = await stubs.make_dataset(alice, alices, n_rows=20)

    for_alice = await delegated(stubs, stack, alice)
    claims = jwt.decode(for_alice, options={"verify_signature": False})
    assert claims["sub"] == alice.user_id and claims["aud"] == "embedviz-internal"

    rows = [m async for m in stubs.ingest_internal.StreamRows(
        ingest_pb2.StreamRowsRequest(dataset=alices_dataset, columns=["text"]), metadata=bearer(for_alice))]
    assert sum(m.row_count for m in rows) == 20
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stubs.ingest_internal.StreamRows(
            ingest_pb2.StreamRowsRequest(dataset=bobs_dataset, columns=["text"]), metadata=bearer(for_alice)
        ):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.ingest.GetDataset(ingest_pb2.GetDatasetRequest(name=bobs_dataset), metadata=bearer(for_alice))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.embedding.CreateEmbedding(
            embedding_pb2.CreateEmbeddingRequest(
                parent=bobs_dataset, embedding=embedding_pb2.Embedding(text_columns=["text"])
            ),
            metadata=bearer(for_alice),
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_delegated_token_is_refused_at_the_edge(stubs: Stubs, stack: Stack) -> None:
    """Internal audience: good between services, never from a browser."""
    who = await stubs.sign_up("worker")
    token = await delegated(stubs, stack, who)
    assert (await call_edge(stack, token))[0] == 16
    assert await call_service(stack, "ingest", token) == grpc.StatusCode.OK


async def test_internal_calls_without_the_secret_are_refused(stubs: Stubs, person: Person) -> None:
    for secret in (None, "guess"):
        metadata = person.md + (((SECRET_HEADER, secret),) if secret else ())
        for call in (
            stubs.auth_internal.IssueDelegatedToken(
                auth_pb2.IssueDelegatedTokenRequest(user=person.user), metadata=metadata
            ),
            stubs.auth_internal.LookupUser(auth_pb2.LookupUserRequest(email=person.email), metadata=metadata),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- the edge conformance suite, against the Envoy edge of the real stack ----------------


@pytest.fixture(scope="module")
def stack_target(stack: Stack, mint: TokenMint, person: Person) -> EdgeTarget:
    return EdgeTarget(
        edge_url=stack.edge_url,
        protected_path="/embedviz.v1.IngestService/ListProjects",
        mint=mint,
        valid_token=person.token,
    )


def test_the_real_stack_run_leaves_out_only_fake_upstream_checks(stack_target: EdgeTarget) -> None:
    left_out = set(CHECKS) - set(checks_for(stack_target))
    assert left_out == {name for name, (_, needs) in CHECKS.items() if {"stream", "echo"} & set(needs)}


# Checks that need the fake upstream (a slow stream, a metadata echo) run in
# tests/edge/test_envoy_edge.py; the rest run here against the real services.
REAL_STACK_CHECKS = [name for name, (_, needs) in CHECKS.items() if not {"stream", "echo"} & set(needs)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", REAL_STACK_CHECKS)
async def test_edge_conformance_on_the_real_stack(name: str, stack_target: EdgeTarget) -> None:
    assert name in checks_for(stack_target), f"{name} needs something this target does not offer"
    fn, _ = CHECKS[name]
    async with aiohttp.ClientSession() as session:
        await fn(stack_target, session)


async def test_a_forged_jwt_payload_header_does_not_change_who_you_are(
    stack: Stack, stubs: Stubs, person: Person
) -> None:
    """The services never read x-jwt-payload: they verify the token. A forged header for
    another user changes nothing, at the edge or straight at a service."""
    other = await stubs.sign_up("victim")
    forged = jwt.utils.base64url_encode(json.dumps({"sub": other.user_id}).encode()).decode()
    body = auth_pb2.GetCurrentUserRequest().SerializeToString()
    async with aiohttp.ClientSession() as session:
        reply = await grpc_web_call(session, stack.edge_url, "/embedviz.v1.AuthService/GetCurrentUser", body,
                                    token=person.token, headers={"x-jwt-payload": forged})
    assert reply.grpc_status == 0
    assert auth_pb2.User.FromString(reply.messages[0]).name == person.user
    me = await stubs.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=person.md + (("x-jwt-payload", forged),)
    )
    assert me.name == person.user
    assert uuid.UUID(other.user_id)
