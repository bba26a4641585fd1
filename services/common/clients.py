"""Calls to other services: channels, the caller's identity on outgoing calls, delegated
tokens for background workers, and the project-role check every service makes."""

from __future__ import annotations

import asyncio
import time

import grpc

from embedviz.v1 import auth_pb2, auth_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from services.common.auth import Identity, TokenVerifier
from services.common.errors import NotFound, PermissionDenied

INTERNAL_SECRET_HEADER = "x-embedviz-internal-secret"

ROLE_NAMES = {
    ingest_pb2.ROLE_VIEWER: "viewer",
    ingest_pb2.ROLE_EDITOR: "editor",
    ingest_pb2.ROLE_OWNER: "owner",
}


class Channels:
    """One channel per target address, opened on first use, closed together."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, target: str) -> grpc.aio.Channel:
        channel = self._channels.get(target)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ],
            )
            self._channels[target] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class DelegatedTokens:
    """Short-lived tokens that let a background worker act as a job's owner, minted by
    the auth service for callers that hold the internal secret."""

    def __init__(self, auth_channel: grpc.aio.Channel, secret: str, verifier: TokenVerifier) -> None:
        self._stub = auth_pb2_grpc.AuthInternalServiceStub(auth_channel)
        self._secret = secret
        self._verifier = verifier
        self._cache: dict[str, tuple[float, Identity]] = {}
        self._lock = asyncio.Lock()

    async def identity_for(self, user: str) -> Identity:
        async with self._lock:
            cached = self._cache.get(user)
            if cached and cached[0] - time.time() > 60:
                return cached[1]
            response = await self._stub.IssueDelegatedToken(
                auth_pb2.IssueDelegatedTokenRequest(user=user, ttl_seconds=600),
                metadata=((INTERNAL_SECRET_HEADER, self._secret),),
                timeout=10,
            )
            identity = await self._verifier.verify(response.access_token)
            expires = response.access_token_expire_time.ToSeconds()
            self._cache[user] = (float(expires), identity)
            return identity


class ProjectAccess:
    """The caller's role in a project, asked of ingest (the owner of projects) and cached
    for a few seconds. No role: NOT_FOUND. Too small a role: PERMISSION_DENIED."""

    def __init__(self, ingest_channel: grpc.aio.Channel, ttl: float = 5.0) -> None:
        self._stub = ingest_pb2_grpc.IngestInternalServiceStub(ingest_channel)
        self._ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, int]] = {}

    async def role(self, identity: Identity, project: str) -> int:
        key = (identity.user_id, project)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached and now - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await self._stub.GetProjectRole(
                ingest_pb2.GetProjectRoleRequest(project=project),
                metadata=identity.metadata(),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"{project} not found") from None
            raise
        self._cache[key] = (now, response.role)
        return response.role

    async def require(self, identity: Identity, project: str, minimum: int, resource: str = "") -> int:
        role = await self.role(identity, project)
        if role < minimum:
            what = resource or project
            raise PermissionDenied(
                f"your role in {project} is {ROLE_NAMES.get(role, 'none')}; "
                f"this needs {ROLE_NAMES[minimum]} on {what}"
            )
        return role
