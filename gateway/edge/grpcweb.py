"""grpc-web wire format: request bodies, data and trailer frames, statuses, deadlines.

Plain functions over bytes, following the gRPC-Web protocol document
(github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from dataclasses import dataclass

DATA_FLAG = 0x00
TRAILER_FLAG = 0x80
GRPC_WEB = "application/grpc-web"
GRPC_WEB_PROTO = "application/grpc-web+proto"
GRPC_WEB_TEXT = "application/grpc-web-text"
GRPC_WEB_TEXT_PROTO = "application/grpc-web-text+proto"

# grpc status codes used by the edge itself
OK = 0
UNKNOWN = 2
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16


class GrpcWebError(ValueError):
    """A request body that is not valid grpc-web."""


@dataclass(frozen=True)
class WebMode:
    text: bool  # grpc-web-text: every frame base64-encoded

    @property
    def response_content_type(self) -> str:
        return GRPC_WEB_TEXT_PROTO if self.text else GRPC_WEB_PROTO


def web_mode(content_type: str | None) -> WebMode | None:
    """The grpc-web flavour of a request, or None when it is not grpc-web."""
    base = (content_type or "").split(";")[0].strip().lower()
    if base in (GRPC_WEB, GRPC_WEB_PROTO):
        return WebMode(text=False)
    if base in (GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO):
        return WebMode(text=True)
    return None


def _b64decode_concatenated(data: bytes) -> bytes:
    """Decode base64 that may be several padded chunks written one after another."""
    out = bytearray()
    chunk = bytearray()
    for b in data.strip():
        if b in b"\r\n \t":
            continue
        chunk.append(b)
        if len(chunk) % 4 == 0 and chunk.endswith(b"="):
            out += base64.b64decode(bytes(chunk), validate=True)
            chunk.clear()
    if chunk:
        out += base64.b64decode(bytes(chunk) + b"=" * (-len(chunk) % 4), validate=True)
    return bytes(out)


def decode_request(body: bytes, mode: WebMode) -> bytes:
    """The single request message of a unary or server-streaming call."""
    try:
        raw = _b64decode_concatenated(body) if mode.text else body
    except ValueError as exc:
        raise GrpcWebError("grpc-web-text body is not valid base64") from exc
    messages = []
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < 5:
            raise GrpcWebError("truncated grpc-web frame header")
        flag, length = struct.unpack_from(">BI", raw, pos)
        pos += 5
        if len(raw) - pos < length:
            raise GrpcWebError("truncated grpc-web frame")
        if flag & 0x01:
            raise GrpcWebError("compressed grpc-web frames are not supported")
        if flag == DATA_FLAG:
            messages.append(raw[pos : pos + length])
        pos += length
    if len(messages) != 1:
        raise GrpcWebError(f"expected one request message, got {len(messages)} (grpc-web carries unary and server-streaming calls only)")
    return messages[0]


def encode_frame(flag: int, payload: bytes, mode: WebMode) -> bytes:
    frame = struct.pack(">BI", flag, len(payload)) + payload
    return base64.b64encode(frame) if mode.text else frame


def data_frame(message: bytes, mode: WebMode) -> bytes:
    return encode_frame(DATA_FLAG, message, mode)


def percent_encode(message: str) -> str:
    """grpc-message encoding: bytes outside printable ASCII, and '%', become %XX."""
    out = []
    for b in message.encode("utf-8"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(chr(b))
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def metadata_value_text(key: str, value: str | bytes) -> str:
    if key.endswith("-bin"):
        raw = value if isinstance(value, bytes) else value.encode()
        return base64.b64encode(raw).decode().rstrip("=")
    return value.decode("latin-1") if isinstance(value, bytes) else value


def status_headers(code: int, message: str, trailing: Iterable[tuple[str, str | bytes]] = ()) -> list[tuple[str, str]]:
    headers = [("grpc-status", str(code))]
    if message:
        headers.append(("grpc-message", percent_encode(message)))
    for key, value in trailing:
        k = key.lower()
        if k in ("grpc-status", "grpc-message"):
            continue
        headers.append((k, metadata_value_text(k, value)))
    return headers


def trailer_frame(headers: list[tuple[str, str]], mode: WebMode) -> bytes:
    block = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
    return encode_frame(TRAILER_FLAG, block, mode)


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(value: str | None) -> float | None:
    """Seconds from a grpc-timeout header ("100m", "5S"); None when absent or malformed."""
    if not value or len(value) < 2 or value[-1] not in _TIMEOUT_UNITS or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]


def grpc_status_for_http(status: int) -> int:
    """Envoy's mapping of an HTTP status in a local reply to a gRPC status."""
    return {400: INTERNAL, 401: UNAUTHENTICATED, 403: 7, 404: UNIMPLEMENTED, 429: UNAVAILABLE,
            502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}.get(status, UNKNOWN)


def parse_trailer_block(block: bytes) -> dict[str, str]:
    """Headers of a trailer frame (for clients and tests)."""
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if ":" in line:
            k, _, v = line.partition(":")
            out[k.strip().lower()] = v.strip()
    return out


def split_frames(body: bytes, mode: WebMode) -> list[tuple[int, bytes]]:
    """All frames of a grpc-web response body (for clients and tests)."""
    raw = _b64decode_concatenated(body) if mode.text else body
    frames = []
    pos = 0
    while pos + 5 <= len(raw):
        flag, length = struct.unpack_from(">BI", raw, pos)
        frames.append((flag, raw[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    if pos != len(raw):
        raise GrpcWebError("truncated grpc-web response")
    return frames
