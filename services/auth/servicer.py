"""AuthService and AuthInternalService: check the request, call the domain, build messages."""

from __future__ import annotations

import hmac
from datetime import datetime

from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from embedviz.v1 import auth_pb2, auth_pb2_grpc
from services.auth import models
from services.auth.accounts import Accounts, Tokens
from services.common.auth import current_identity
from services.common.clients import INTERNAL_SECRET_HEADER
from services.common.errors import InvalidArgument, NotFound, PermissionDenied, excerpt
from services.common.jobs import timestamp
from services.common.names import parse
from services.common.rpc_types import Context


def _user(user: models.User) -> auth_pb2.User:
    return auth_pb2.User(
        name=f"users/{user.id}",
        email=user.email,
        display_name=user.display_name,
        create_time=timestamp(user.create_time),
    )


def _session(tokens: Tokens) -> auth_pb2.Session:
    return auth_pb2.Session(
        access_token=tokens.access_token,
        access_token_expire_time=timestamp(tokens.access_expire),
        refresh_token=tokens.refresh_token,
        refresh_token_expire_time=timestamp(tokens.refresh_expire),
    )


def _api_key(key: models.ApiKey) -> auth_pb2.ApiKey:
    message = auth_pb2.ApiKey(
        name=f"users/{key.user_id}/apiKeys/{key.id.hex}",
        display_name=key.display_name,
        prefix=key.prefix,
        create_time=timestamp(key.create_time),
    )
    if key.last_used_time is not None:
        message.last_used_time.CopyFrom(timestamp(key.last_used_time))
    return message


def client_address(context: Context) -> str:
    """The caller's network address: the last x-forwarded-for hop (the one the edge
    appended; earlier ones are the client's word), else the gRPC peer without its port."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "x-forwarded-for":
            text = value.decode() if isinstance(value, bytes) else str(value)
            hops = [h.strip() for h in text.split(",") if h.strip()]
            if hops:
                return hops[-1][:64]
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


def _ts(value: datetime) -> Timestamp:
    return timestamp(value)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: Context) -> auth_pb2.SignUpResponse:
        user, tokens = await self._accounts.sign_up(request.email, request.password, request.display_name)
        return auth_pb2.SignUpResponse(user=_user(user), session=_session(tokens))

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        if not request.email or not request.password:
            raise InvalidArgument("email and password are required")
        user, tokens = await self._accounts.login(request.email, request.password, client_address(context))
        return auth_pb2.LoginResponse(user=_user(user), session=_session(tokens))

    async def RefreshSession(
        self, request: auth_pb2.RefreshSessionRequest, context: Context
    ) -> auth_pb2.RefreshSessionResponse:
        tokens = await self._accounts.refresh(request.refresh_token)
        return auth_pb2.RefreshSessionResponse(session=_session(tokens))

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> empty_pb2.Empty:
        if not request.refresh_token:
            raise InvalidArgument("refresh_token is required")
        await self._accounts.logout(current_identity().user_id, request.refresh_token)
        return empty_pb2.Empty()

    async def GetCurrentUser(self, request: auth_pb2.GetCurrentUserRequest, context: Context) -> auth_pb2.User:
        return _user(await self._accounts.get_user(current_identity().user_id))

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Context
    ) -> auth_pb2.CreateApiKeyResponse:
        key, secret = await self._accounts.create_api_key(current_identity().user_id, request.api_key.display_name)
        return auth_pb2.CreateApiKeyResponse(api_key=_api_key(key), secret=secret)

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: Context
    ) -> auth_pb2.ListApiKeysResponse:
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        keys, token = await self._accounts.list_api_keys(
            current_identity().user_id, request.page_size, request.page_token
        )
        return auth_pb2.ListApiKeysResponse(api_keys=[_api_key(k) for k in keys], next_page_token=token)

    async def DeleteApiKey(self, request: auth_pb2.DeleteApiKeyRequest, context: Context) -> empty_pb2.Empty:
        ids = parse(request.name, "users/{user}/apiKeys/{api_key}")
        identity = current_identity()
        if ids["user"] != identity.user_id:
            raise NotFound(f"{excerpt(request.name)} not found")
        await self._accounts.delete_api_key(identity.user_id, ids["api_key"])
        return empty_pb2.Empty()

    async def ExchangeApiKey(
        self, request: auth_pb2.ExchangeApiKeyRequest, context: Context
    ) -> auth_pb2.ExchangeApiKeyResponse:
        if not request.secret:
            raise InvalidArgument("secret is required")
        token = await self._accounts.exchange_api_key(request.secret)
        return auth_pb2.ExchangeApiKeyResponse(access_token=token.token, access_token_expire_time=_ts(token.expire))


class AuthInternalServicer(auth_pb2_grpc.AuthInternalServiceServicer):
    """Only callers holding the internal secret (other services) may mint tokens."""

    def __init__(self, accounts: Accounts, secret: str) -> None:
        self._accounts = accounts
        self._secret = secret

    def _check_secret(self, context: Context, what: str) -> None:
        presented = dict(context.invocation_metadata() or ()).get(INTERNAL_SECRET_HEADER, "")
        if not self._secret or not hmac.compare_digest(str(presented).encode(), self._secret.encode()):
            raise PermissionDenied(f"only embedviz services may {what}")

    async def IssueDelegatedToken(
        self, request: auth_pb2.IssueDelegatedTokenRequest, context: Context
    ) -> auth_pb2.IssueDelegatedTokenResponse:
        self._check_secret(context, "ask for delegated tokens")
        user_id = parse(request.user, "users/{user}")["user"]
        token = await self._accounts.delegated_token(user_id, request.ttl_seconds)
        return auth_pb2.IssueDelegatedTokenResponse(
            access_token=token.token, access_token_expire_time=_ts(token.expire)
        )

    async def LookupUser(self, request: auth_pb2.LookupUserRequest, context: Context) -> auth_pb2.User:
        self._check_secret(context, "look users up by email")
        if not request.email:
            raise InvalidArgument("email is required")
        return _user(await self._accounts.find_by_email(request.email))
