"""Domain errors with their gRPC status, raised by domain code that knows no gRPC.

The error interceptor (services.common.server) turns them into statuses; anything else
becomes INTERNAL with a generic message and a logged traceback."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

# How much of a caller's input an error message quotes (characters), and how long a status
# message may be at all (UTF-8 bytes): gRPC percent-encodes it into a trailer and copies it
# into grpc-status-details-bin, and a reply whose trailers pass 16 KB reaches the client as
# RESOURCE_EXHAUSTED instead of its real status.
EXCERPT_CHARS = 80
MAX_MESSAGE_BYTES = 1024


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of `value` for an error message, with "…" when cut."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def capped(message: str, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """`message` cut to at most `max_bytes` UTF-8 bytes (on a character boundary), "…" when cut."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return message
    return encoded[: max_bytes - 3].decode("utf-8", "ignore") + "…"


class DomainError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    # Extra google.rpc detail messages (e.g. RetryInfo) sent beside the ErrorInfo.
    details: tuple[Message, ...] = ()

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.code.name


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class OutOfRange(DomainError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED
