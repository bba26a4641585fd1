"""Who an email belongs to, asked of the auth service (the owner of users) with the
internal secret, so a project owner can add a member by email."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from embedviz.v1 import auth_pb2, auth_pb2_grpc
from services.common.clients import INTERNAL_SECRET_HEADER
from services.common.errors import InvalidArgument, NotFound, capped, excerpt


@dataclass(frozen=True)
class KnownUser:
    user_id: str
    email: str


class UserDirectory:
    def __init__(self, auth_channel: grpc.aio.Channel, secret: str) -> None:
        self._stub = auth_pb2_grpc.AuthInternalServiceStub(auth_channel)
        self._secret = secret

    async def find(self, email: str) -> KnownUser:
        try:
            user = await self._stub.LookupUser(
                auth_pb2.LookupUserRequest(email=email),
                metadata=((INTERNAL_SECRET_HEADER, self._secret),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(capped(exc.details() or f"no embedviz account uses {excerpt(email)}", 300)) from None
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(capped(f"member.{exc.details()}", 300)) from None
            raise
        return KnownUser(user.name.removeprefix("users/"), user.email)
