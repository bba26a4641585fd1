"""The request id of the call being served: Envoy gives every request an x-request-id and
writes it to its access log; each service puts it on its own log lines and passes it on
when it calls another service, so one id finds a request in every log."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable

HEADER = "x-request-id"
MAX_LENGTH = 64  # ids are UUIDs; anything a client makes up longer than this is cut

_current: contextvars.ContextVar[str] = contextvars.ContextVar("embedviz_request_id", default="-")


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == HEADER and isinstance(value, str) and value:
            return "".join(c for c in value[:MAX_LENGTH] if c.isprintable())
    return None


def set_current(request_id: str) -> None:
    """For the rest of this call (each call is its own task, so its own context)."""
    _current.set(request_id)


def current() -> str:
    return _current.get()


def outgoing() -> tuple[tuple[str, str], ...]:
    """Metadata that carries the current request id on to another service."""
    request_id = _current.get()
    return () if request_id == "-" else ((HEADER, request_id),)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record ("-" outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get()
        return True
