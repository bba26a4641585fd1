"""A hand-framed grpc-web client over aiohttp, as a browser would speak to the edge."""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass, field

import aiohttp

from gateway.edge.grpcweb import TRAILER_FLAG, WebMode, parse_trailer_block, split_frames


@dataclass
class GrpcWebReply:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # monotonic time each message arrived
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int | None:
        """The status a grpc-web client reads: trailer frame first, then trailers-only headers."""
        value = self.trailers.get("grpc-status") or self.headers.get("grpc-status")
        return int(value) if value is not None else None

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message") or self.headers.get("grpc-message", "")


def frame(message: bytes, text: bool = False) -> bytes:
    raw = struct.pack(">BI", 0, len(message)) + message
    return base64.b64encode(raw) if text else raw


async def grpc_web_call(
    session: aiohttp.ClientSession,
    edge_url: str,
    path: str,
    message: bytes = b"",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    text: bool = False,
) -> GrpcWebReply:
    """One unary or server-streaming call; data frames are timed as they arrive."""
    mode = WebMode(text=text)
    req_headers = {
        "Content-Type": "application/grpc-web-text" if text else "application/grpc-web+proto",
        "X-Grpc-Web": "1",
        "Origin": "http://localhost:5173",
        **(headers or {}),
    }
    if token is not None:
        req_headers["Authorization"] = f"Bearer {token}"
    async with session.post(edge_url.rstrip("/") + path, data=frame(message, text), headers=req_headers) as resp:
        reply = GrpcWebReply(resp.status, {k.lower(): v for k, v in resp.headers.items()})
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            # Binary mode: peel off complete frames as they arrive, to time each message.
            while not text and len(buffer) >= 5:
                flag, length = struct.unpack_from(">BI", buffer)
                if len(buffer) < 5 + length:
                    break
                payload, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                _take(reply, flag, payload)
        if text:
            for flag, payload in split_frames(buffer, mode):
                _take(reply, flag, payload)
        elif buffer:
            raise AssertionError(f"{len(buffer)} bytes left over: truncated grpc-web frame")
    return reply


def _take(reply: GrpcWebReply, flag: int, payload: bytes) -> None:
    if flag & TRAILER_FLAG:
        reply.trailers.update(parse_trailer_block(payload))
    else:
        reply.messages.append(payload)
        reply.arrivals.append(time.monotonic())
