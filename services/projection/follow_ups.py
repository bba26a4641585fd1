"""Follow-up projections: the projection service reads every embedding event from NATS
through a durable consumer of its own, so an embedding that succeeds while no projection
service runs is still picked up when one starts; each one that asked for it
(project_when_done) gets its default projection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from services.common.consumer import Consumer, ConsumerSettings, event_consumer
from services.common.errors import DomainError
from services.common.events import EventBus

SUBJECT = "events.embedding.*"
DURABLE = "projection-follow-ups"


def _retryable(exc: BaseException) -> bool:
    """A failure that may pass (a service down, a refusal that a retry with a fresh token
    may clear) is tried again later; anything else is logged and the event dropped."""
    return isinstance(exc, (DomainError, grpc.aio.AioRpcError, OSError))


def follow_ups(bus: EventBus, handle: Callable[[bytes], Awaitable[object]]) -> Consumer[bytes]:
    """Hands each embedding event to `handle` (the shared consumer, services/common/consumer.py)."""
    return event_consumer(bus, SUBJECT, DURABLE, handle, decode=bytes, classify=_retryable,
                          settings=ConsumerSettings(batch=32))
