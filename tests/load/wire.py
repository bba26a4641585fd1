"""How a simulated user talks to the edge: one `Browser` per user, speaking grpc-web over
HTTP/1.1 as the web client does (aiohttp, at most 6 connections, gzip accepted, the frames
of tests/edge/client.py read as they arrive), or plain gRPC (h2c) through the same Envoy
port as the CLI and SDKs do. Both raise `CallFailed` with the gRPC code's name."""

from __future__ import annotations

import struct
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Protocol, TypeVar
from urllib.parse import unquote

import aiohttp
import grpc
from google.protobuf.message import Message

from tests.edge.client import TRAILER_FLAG, frame, parse_trailer_block

M = TypeVar("M", bound=Message)

# grpc-status numbers to names, as grpc.StatusCode spells them.
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
# What a grpc-web client makes of an HTTP status when no grpc-status came (the grpc-web spec).
HTTP_TO_CODE = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED",
                429: "UNAVAILABLE", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}


class CallFailed(Exception):
    """A call that ended with a gRPC status other than OK (or never reached one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Browser(Protocol):
    async def unary(self, path: str, request: Message, reply: type[M], token: str | None = None) -> M: ...

    def stream(
        self, path: str, request: Message, reply: type[M], token: str | None = None
    ) -> AsyncGenerator[M, None]: ...

    async def close(self) -> None: ...


class GrpcWebBrowser:
    """grpc-web over aiohttp, the way a browser tab sends it: HTTP/1.1 keep-alive, at most six
    connections to the origin, `Accept-Encoding: gzip` (aiohttp's default), an Origin."""

    def __init__(self, edge_url: str, timeout_s: float) -> None:
        self.edge_url = edge_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=6))

    def _headers(self, token: str | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/grpc-web+proto",
            "X-Grpc-Web": "1",
            "X-User-Agent": "embedviz-load",
            "Origin": "http://localhost:5173",
            "grpc-timeout": f"{int(self.timeout_s)}S",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def unary(self, path: str, request: Message, reply: type[M], token: str | None = None) -> M:
        out: M | None = None
        async with aclosing(self.stream(path, request, reply, token)) as messages:
            async for message in messages:
                out = message
        if out is None:
            raise CallFailed("INTERNAL", "a unary call ended OK without a message")
        return out

    async def stream(
        self, path: str, request: Message, reply: type[M], token: str | None = None
    ) -> AsyncGenerator[M, None]:
        trailers: dict[str, str] = {}
        try:
            async with self.session.post(
                self.edge_url + path,
                data=frame(request.SerializeToString()),
                headers=self._headers(token),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s),
            ) as resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                if resp.status != 200 and "grpc-status" not in headers:
                    raise CallFailed(HTTP_TO_CODE.get(resp.status, "UNKNOWN"), f"HTTP {resp.status} from the edge")
                buffer = bytearray()
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while len(buffer) >= 5:
                        flag, length = struct.unpack_from(">BI", buffer)
                        if len(buffer) < 5 + length:
                            break
                        payload = bytes(buffer[5 : 5 + length])
                        del buffer[: 5 + length]
                        if flag & TRAILER_FLAG:
                            trailers.update(parse_trailer_block(payload))
                        else:
                            yield reply.FromString(payload)
                if buffer:
                    raise CallFailed("INTERNAL", f"{len(buffer)} bytes of a truncated grpc-web frame")
                status = trailers.get("grpc-status") or headers.get("grpc-status")
                message = unquote(trailers.get("grpc-message") or headers.get("grpc-message", ""))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise CallFailed("UNAVAILABLE", f"{type(exc).__name__}: {exc}") from exc
        if status is None:
            raise CallFailed("INTERNAL", "the reply ended without a grpc-status")
        if status != "0":
            raise CallFailed(CODE_NAMES.get(int(status), f"CODE_{status}"), message)

    async def close(self) -> None:
        await self.session.close()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class GrpcBrowser:
    """Plain gRPC (HTTP/2 without TLS) to the edge's one port, one channel per user."""

    def __init__(self, edge_addr: str, timeout_s: float) -> None:
        options = [("grpc.max_receive_message_length", 64 << 20)]
        self.channel = grpc.aio.insecure_channel(edge_addr, options)
        self.timeout_s = timeout_s

    @staticmethod
    def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def unary(self, path: str, request: Message, reply: type[M], token: str | None = None) -> M:
        call = self.channel.unary_unary(
            path, request_serializer=_serialize, response_deserializer=reply.FromString
        )
        try:
            result: M = await call(request, metadata=self._metadata(token), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise CallFailed(exc.code().name, exc.details() or "") from exc
        return result

    async def stream(
        self, path: str, request: Message, reply: type[M], token: str | None = None
    ) -> AsyncGenerator[M, None]:
        call = self.channel.unary_stream(
            path, request_serializer=_serialize, response_deserializer=reply.FromString
        )(request, metadata=self._metadata(token), timeout=self.timeout_s)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise CallFailed(exc.code().name, exc.details() or "") from exc
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()


def open_browser(transport: str, edge_url: str, timeout_s: float) -> Browser:
    if transport == "grpc-web":
        return GrpcWebBrowser(edge_url, timeout_s)
    if transport == "grpc":
        return GrpcBrowser(edge_url.removeprefix("http://"), timeout_s)
    raise SystemExit(f"LOAD_TRANSPORT must be grpc-web or grpc, not {transport!r}")
