"""Page sizes and page tokens, shared by every List call.

A page token is opaque to the caller and checked on the way back: the JSON a service
chose (base64), then an HMAC over it and over the call it was given out by — the method
and the whole request except page_token and page_size (AIP-158: every other field must be
the same on the next page) — with a key that every replica derives from the internal
secret. A token that was forged, edited, or given out by another call (another method,
parent, filter or order) is INVALID_ARGUMENT, so the values inside it are always ones the
service itself wrote.

The shared input interceptor (services/common/server.py) binds each call's scope with
`bind_call`; `encode` and `decode` work only inside such a call."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from services.common.errors import InvalidArgument

# The fields a caller may change between pages of one listing.
PAGING_FIELDS = ("page_token", "page_size")
_VERSION = b"embedviz-page-token-v1"
_MAC_BYTES = 16
INVALID_TOKEN = "page_token is not a token this call gave out; start again without it"


@dataclass(frozen=True)
class _Scope:
    key: bytes
    call: bytes  # digest of the method and the request without its paging fields


_scope: ContextVar[_Scope | None] = ContextVar("embedviz_page_token_scope", default=None)


def key_from_secret(secret: str) -> bytes:
    """The signing key of page tokens: the same on every replica that shares `secret`.
    Without a secret (a single process in a test), a random key: tokens then work only
    against the process that gave them out."""
    if not secret:
        return os.urandom(32)
    return hmac.new(secret.encode(), _VERSION, hashlib.sha256).digest()


def has_page_token(request: Message) -> bool:
    return "page_token" in request.DESCRIPTOR.fields_by_name


def bind_call(key: bytes, method: str, request: Message) -> None:
    """Make `encode` and `decode` in this call sign and check for (method, request)."""
    query = type(request)()
    query.CopyFrom(request)
    for name in PAGING_FIELDS:
        if name in query.DESCRIPTOR.fields_by_name:
            query.ClearField(name)
    digest = hashlib.sha256(method.encode() + b"\n" + query.SerializeToString(deterministic=True)).digest()
    _scope.set(_Scope(key, digest))


def _current() -> _Scope:
    scope = _scope.get()
    if scope is None:
        raise RuntimeError(
            "page tokens are made and read only inside a List call of a server from services.common.server"
        )
    return scope


def _mac(scope: _Scope, payload: bytes) -> bytes:
    return hmac.new(scope.key, _VERSION + scope.call + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def page_size(requested: int, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument(f"page_size must not be negative (got {requested})")
    return min(requested or default, maximum)


def encode(value: Any) -> str:
    """A token for the next page of this call, carrying `value` (any JSON)."""
    payload = json.dumps(value, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(_current(), payload))}"


def decode(token: str) -> Any:
    """The value `encode` put in `token` in an earlier page of this same call; None for no
    token. Anything else is INVALID_ARGUMENT."""
    if not token:
        return None
    scope = _current()
    body, _, signature = token.partition(".")
    try:
        payload, mac = _unb64(body), _unb64(signature)
    except (binascii.Error, ValueError):
        raise InvalidArgument(INVALID_TOKEN, "INVALID_PAGE_TOKEN") from None
    if not hmac.compare_digest(mac, _mac(scope, payload)):
        raise InvalidArgument(INVALID_TOKEN, "INVALID_PAGE_TOKEN")
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):  # signed by us, so only if the format changed
        raise InvalidArgument(INVALID_TOKEN, "INVALID_PAGE_TOKEN") from None
