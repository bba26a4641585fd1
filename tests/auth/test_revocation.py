"""Logging out, a reused refresh token and deleting an API key stop their access tokens at
every service within a second or two (they used to work on until they expired, 15 min):
auth announces each revocation on NATS and every service follows it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import jwt
import pytest

from embedviz.v1 import auth_pb2
from services.common import revocations
from services.common.events import EventBus
from services.stack import Stack
from tests.support.world import Stubs
from tests.test_tokens import SERVICE_CALLS, call_edge, call_service

REVOKED_WITHIN_S = 3.0  # docs/identity.md


@pytest.fixture(scope="module")
async def stubs(stack: Stack) -> AsyncIterator[Stubs]:
    s = Stubs(stack)
    yield s
    await s.close()


async def _works_everywhere(stack: Stack, token: str) -> None:
    for service in SERVICE_CALLS:
        code = await call_service(stack, service, token)
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), (service, code)  # NOT_FOUND: past auth
    assert (await call_edge(stack, token))[0] == 0


async def _refused_everywhere_within(stack: Stack, token: str, message: str) -> float:
    started = time.monotonic()
    while True:
        codes = {s: await call_service(stack, s, token) for s in SERVICE_CALLS}
        status, said = await call_edge(stack, token)
        if set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED} and status == 16:
            assert message in said, said
            return time.monotonic() - started
        assert time.monotonic() - started < REVOKED_WITHIN_S, f"still accepted: {codes}, edge {status}"
        await asyncio.sleep(0.1)


async def test_logout_stops_the_access_token_at_every_service(stack: Stack, stubs: Stubs) -> None:
    who = await stubs.sign_up("revoke-logout")
    await _works_everywhere(stack, who.token)
    await stubs.auth.Logout(auth_pb2.LogoutRequest(refresh_token=who.refresh_token), metadata=who.md)
    took = await _refused_everywhere_within(stack, who.token, "session has ended")
    print(f"logout: refused everywhere {took:.2f} s after")


async def test_deleting_an_api_key_stops_the_tokens_made_from_it(stack: Stack, stubs: Stubs) -> None:
    who = await stubs.sign_up("revoke-key")
    made = await stubs.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name="script")), metadata=who.md
    )
    token = (await stubs.auth.ExchangeApiKey(auth_pb2.ExchangeApiKeyRequest(secret=made.secret))).access_token
    await _works_everywhere(stack, token)
    await stubs.auth.DeleteApiKey(auth_pb2.DeleteApiKeyRequest(name=made.api_key.name), metadata=who.md)
    took = await _refused_everywhere_within(stack, token, "API key")
    print(f"API key deletion: refused everywhere {took:.2f} s after")
    await _works_everywhere(stack, who.token)  # the person's own session is untouched


async def test_a_reused_refresh_token_stops_the_whole_family_s_access_tokens(stack: Stack, stubs: Stubs) -> None:
    who = await stubs.sign_up("revoke-reuse")
    fresh = await stubs.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=who.refresh_token))
    await _works_everywhere(stack, fresh.session.access_token)
    with pytest.raises(grpc.aio.AioRpcError):  # the old refresh token again: it leaked
        await stubs.auth.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=who.refresh_token))
    await _refused_everywhere_within(stack, fresh.session.access_token, "session has ended")


async def test_a_service_that_starts_after_a_revocation_knows_it(stack: Stack, stubs: Stubs) -> None:
    who = await stubs.sign_up("revoke-late")
    await stubs.auth.Logout(auth_pb2.LogoutRequest(refresh_token=who.refresh_token), metadata=who.md)
    family = str(jwt.decode(who.token, options={"verify_signature": False})["sid"])
    bus = await EventBus.connect(stack.nats_url, name="test-late-follower")
    late = revocations.Revocations()
    try:
        await late.follow(bus)  # a process starting now catches up before it serves
        assert late.is_revoked(revocations.SESSION, family)
        assert not late.is_revoked(revocations.SESSION, "some-other-family")
    finally:
        await late.close()
        await bus.close()

