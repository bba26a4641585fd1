"""The auth service over a real socket: sign-up, login, sessions, API keys, delegation."""

from __future__ import annotations

import uuid

import grpc
import jwt
import pytest

from embedviz.v1 import auth_pb2, auth_pb2_grpc
from services.stack import Stack

PASSWORD = "correct horse battery"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def auth(stack: Stack):  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(stack.addrs["auth"]) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel), auth_pb2_grpc.AuthInternalServiceStub(channel)


def email() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.org"


async def test_sign_up_then_who_am_i(auth) -> None:  # type: ignore[no-untyped-def]
    stub, _ = auth
    address = email()
    response = await stub.SignUp(auth_pb2.SignUpRequest(email=address.upper(), password=PASSWORD))
    assert response.user.email == address
    assert response.user.name.startswith("users/")
    me = await stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=bearer(response.session.access_token))
    assert me == response.user


async def test_access_token_is_es256_with_kid_and_claims(auth) -> None:  # type: ignore[no-untyped-def]
    stub, _ = auth
    response = await stub.SignUp(auth_pb2.SignUpRequest(email=email(), password=PASSWORD))
    header = jwt.get_unverified_header(response.session.access_token)
    claims = jwt.decode(response.session.access_token, options={"verify_signature": False})
    assert header["alg"] == "ES256" and header["kid"]
    assert claims["iss"] == "embedviz-auth" and claims["aud"] == "embedviz"
    assert f"users/{claims['sub']}" == response.user.name
    assert 0 < claims["exp"] - claims["iat"] <= 900


async def test_duplicate_sign_up_is_already_exists(auth) -> None:  # type: ignore[no-untyped-def]
    stub, _ = auth
    address = email()
    await stub.SignUp(auth_pb2.SignUpRequest(email=address, password=PASSWORD))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SignUp(auth_pb2.SignUpRequest(email=address, password=PASSWORD))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("address", "password", "words"),
    [("not-an-email", PASSWORD, "not an email"), ("x@example.org", "short", "too short")],
)
async def test_bad_sign_up_says_what_is_wrong(auth, address: str, password: str, words: str) -> None:  # type: ignore[no-untyped-def]
    stub, _ = auth
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SignUp(auth_pb2.SignUpRequest(email=address, password=password))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (err.value.details() or "")


async def test_wrong_password_and_unknown_email_get_the_same_answer(auth) -> None:  # type: ignore[no-untyped-def]
    stub, _ = auth
    address = email()
    await stub.SignUp(auth_pb2.SignUpRequest(email=address, password=PASSWORD))
    answers = []
    for who, password in ((address, "wrong password 123"), (email(), PASSWORD)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Login(auth_pb2.LoginRequest(email=who, password=password))
        answers.append((err.value.code(), err.value.details()))
    assert answers[0] == answers[1] == (grpc.StatusCode.UNAUTHENTICATED, "email or password is wrong")


async def test_refresh_rotates_and_reuse_revokes_the_family(auth) -> None:  # type: ignore[no-untyped-def]
    stub, _ = auth
    first = (await stub.SignUp(auth_pb2.SignUpRequest(email=email(), password=PASSWORD))).session
    second = (await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=first.refresh_token))).session
    assert second.refresh_token != first.refresh_token
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=first.refresh_token))
    assert reused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as revoked:
        await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=second.refresh_token))
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_logout_ends_the_session(auth) -> None:  # type: ignore[no-untyped-def]
    stub, _ = auth
    session = (await stub.SignUp(auth_pb2.SignUpRequest(email=email(), password=PASSWORD))).session
    await stub.Logout(
        auth_pb2.LogoutRequest(refresh_token=session.refresh_token), metadata=bearer(session.access_token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RefreshSession(auth_pb2.RefreshSessionRequest(refresh_token=session.refresh_token))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_api_key_is_shown_once_listed_by_prefix_and_exchanged(auth) -> None:  # type: ignore[no-untyped-def]
    stub, _ = auth
    signed = await stub.SignUp(auth_pb2.SignUpRequest(email=email(), password=PASSWORD))
    me = bearer(signed.session.access_token)
    created = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(display_name="ci")), metadata=me
    )
    listed = await stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=me)
    assert [k.prefix for k in listed.api_keys] == [created.secret[:10]]
    assert created.secret not in str(listed)
    exchanged = await stub.ExchangeApiKey(auth_pb2.ExchangeApiKeyRequest(secret=created.secret))
    who = await stub.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=bearer(exchanged.access_token))
    assert who.name == signed.user.name
    await stub.DeleteApiKey(auth_pb2.DeleteApiKeyRequest(name=created.api_key.name), metadata=me)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ExchangeApiKey(auth_pb2.ExchangeApiKeyRequest(secret=created.secret))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_delegated_tokens_need_the_internal_secret(auth, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    stub, internal = auth
    user = (await stub.SignUp(auth_pb2.SignUpRequest(email=email(), password=PASSWORD))).user
    request = auth_pb2.IssueDelegatedTokenRequest(user=user.name)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await internal.IssueDelegatedToken(request, metadata=(("x-embedviz-internal-secret", "guess"),))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    issued = await internal.IssueDelegatedToken(
        request, metadata=(("x-embedviz-internal-secret", stack.env["EMBEDVIZ_INTERNAL_SECRET"]),)
    )
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert claims["aud"] == "embedviz-internal" and f"users/{claims['sub']}" == user.name
