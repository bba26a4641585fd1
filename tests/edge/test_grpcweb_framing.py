"""The stand-in edge's grpc-web wire format, byte for byte."""

from __future__ import annotations

import base64

import pytest

from gateway.edge import grpcweb
from gateway.edge.grpcweb import WebMode

BINARY = WebMode(text=False)
TEXT = WebMode(text=True)


def test_request_frame_is_decoded_in_binary_and_text_mode() -> None:
    framed = b"\x00\x00\x00\x00\x03abc"
    assert grpcweb.decode_request(framed, BINARY) == b"abc"
    assert grpcweb.decode_request(base64.b64encode(framed), TEXT) == b"abc"


def test_text_mode_accepts_concatenated_padded_chunks() -> None:
    framed = b"\x00\x00\x00\x00\x04abcd"
    body = base64.b64encode(framed[:4]) + base64.b64encode(framed[4:])
    assert grpcweb.decode_request(body, TEXT) == b"abcd"


def test_truncated_or_streaming_requests_are_refused() -> None:
    with pytest.raises(grpcweb.GrpcWebError):
        grpcweb.decode_request(b"\x00\x00\x00\x00\x09abc", BINARY)
    with pytest.raises(grpcweb.GrpcWebError):
        grpcweb.decode_request(b"\x00\x00\x00\x00\x01a\x00\x00\x00\x00\x01b", BINARY)


def test_trailer_frame_carries_status_and_percent_encoded_message() -> None:
    headers = grpcweb.status_headers(16, "Jwt is expired 100% ✗", [("x-trace-bin", b"\x01\x02")])
    frame = grpcweb.trailer_frame(headers, BINARY)
    assert frame[0] == 0x80
    trailers = grpcweb.parse_trailer_block(frame[5:])
    assert trailers == {"grpc-status": "16", "grpc-message": "Jwt is expired 100%25 %E2%9C%97", "x-trace-bin": "AQI"}
    assert grpcweb.split_frames(grpcweb.data_frame(b"m", TEXT) + grpcweb.trailer_frame(headers, TEXT), TEXT)[0] == (0, b"m")


def test_grpc_timeout_units() -> None:
    assert grpcweb.parse_grpc_timeout("1500m") == 1.5
    assert grpcweb.parse_grpc_timeout("2S") == 2.0
    assert grpcweb.parse_grpc_timeout("1H") == 3600.0
    assert grpcweb.parse_grpc_timeout("abc") is None
    assert grpcweb.parse_grpc_timeout(None) is None


def test_local_reply_http_status_maps_like_envoy() -> None:
    assert grpcweb.grpc_status_for_http(404) == grpcweb.UNIMPLEMENTED
    assert grpcweb.grpc_status_for_http(401) == grpcweb.UNAUTHENTICATED
    assert grpcweb.grpc_status_for_http(503) == grpcweb.UNAVAILABLE
