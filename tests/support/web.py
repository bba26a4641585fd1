"""Typed grpc-web calls through the edge, as the browser makes them."""

from __future__ import annotations

from typing import TypeVar

import aiohttp
from google.protobuf.message import Message

from tests.edge.client import grpc_web_call

M = TypeVar("M", bound=Message)


class GrpcWebError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"grpc-status {status}: {message}")
        self.status = status
        self.message = message


class EdgeClient:
    def __init__(self, session: aiohttp.ClientSession, edge_url: str, token: str | None = None) -> None:
        self.session = session
        self.edge_url = edge_url
        self.token = token

    async def stream(self, method: str, request: Message, response_cls: type[M]) -> list[M]:
        reply = await grpc_web_call(
            self.session, self.edge_url, method, request.SerializeToString(), token=self.token
        )
        if reply.grpc_status != 0:
            raise GrpcWebError(reply.grpc_status, reply.grpc_message)
        return [response_cls.FromString(m) for m in reply.messages]

    async def unary(self, method: str, request: Message, response_cls: type[M]) -> M:
        messages = await self.stream(method, request, response_cls)
        assert len(messages) == 1, f"{method} sent {len(messages)} messages"
        return messages[0]
