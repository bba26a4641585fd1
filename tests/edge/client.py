"""A hand-framed grpc-web client over aiohttp, as a browser speaks to the edge
(the wire format: github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md)."""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

import aiohttp

TRAILER_FLAG = 0x80
GRPC_WEB_TEXT = "application/grpc-web-text"


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
        return unquote(self.trailers.get("grpc-message") or self.headers.get("grpc-message", ""))


def frame(message: bytes, text: bool = False) -> bytes:
    raw = struct.pack(">BI", 0, len(message)) + message
    return base64.b64encode(raw) if text else raw


def parse_trailer_block(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if ":" in line:
            key, _, value = line.partition(":")
            out[key.strip().lower()] = value.strip()
    return out


def decode_text_body(body: bytes) -> bytes:
    """grpc-web-text: base64 that may be several padded chunks, one per frame, back to back."""
    out = bytearray()
    chunk = bytearray()
    for b in body:
        if b in b"\r\n \t":
            continue
        chunk.append(b)
        if len(chunk) % 4 == 0 and chunk.endswith(b"="):
            out += base64.b64decode(bytes(chunk), validate=True)
            chunk.clear()
    if chunk:
        out += base64.b64decode(bytes(chunk) + b"=" * (-len(chunk) % 4), validate=True)
    return bytes(out)


async def grpc_web_call(
    session: aiohttp.ClientSession,
    edge_url: str,
    path: str,
    message: bytes = b"",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    text: bool = False,
) -> GrpcWebReply:
    """One unary or server-streaming call; data frames are timed as they arrive. In text
    mode the request is base64 and the client asks for a base64 reply (Accept), as grpc-web
    clients do."""
    req_headers = {
        "Content-Type": "application/grpc-web-text" if text else "application/grpc-web+proto",
        "X-Grpc-Web": "1",
        "Origin": "http://localhost:5173",
        **({"Accept": GRPC_WEB_TEXT} if text else {}),
        **(headers or {}),
    }
    if token is not None:
        req_headers["Authorization"] = f"Bearer {token}"
    async with session.post(edge_url.rstrip("/") + path, data=frame(message, text), headers=req_headers) as resp:
        reply = GrpcWebReply(resp.status, {k.lower(): v for k, v in resp.headers.items()})
        text_reply = reply.headers.get("content-type", "").startswith(GRPC_WEB_TEXT)
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            # Binary mode: peel off complete frames as they arrive, to time each message.
            while not text_reply and len(buffer) >= 5:
                flag, length = struct.unpack_from(">BI", buffer)
                if len(buffer) < 5 + length:
                    break
                payload, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                _take(reply, flag, payload)
        if text_reply:
            raw = decode_text_body(buffer)
            while len(raw) >= 5:
                flag, length = struct.unpack_from(">BI", raw)
                _take(reply, flag, raw[5 : 5 + length])
                raw = raw[5 + length :]
            buffer = raw
        if buffer:
            raise AssertionError(f"{len(buffer)} bytes left over: truncated grpc-web frame")
    return reply


def _take(reply: GrpcWebReply, flag: int, payload: bytes) -> None:
    if flag & TRAILER_FLAG:
        reply.trailers.update(parse_trailer_block(payload))
    else:
        reply.messages.append(payload)
        reply.arrivals.append(time.monotonic())
