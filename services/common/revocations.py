"""Ended sessions and deleted API keys, as every service sees them.

An access token stays valid until it expires (15 minutes), but a person who logs out, or
deletes the API key a script used, expects it to stop working now. Auth publishes each
revocation on NATS JetStream (`revocations.session.<family>`, `revocations.api-key.<id>`)
in a stream that keeps them as long as a token lives; every service follows that stream
from its start and refuses tokens of a revoked session or key. The edge cannot know
(Envoy checks signatures only), but every call ends at a service, which does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from services.common.events import EventBus

log = logging.getLogger(__name__)

STREAM = "EMBEDVIZ_REVOCATIONS"
SESSION = "session"
API_KEY = "api-key"
# Longer than any access token lives (15 min by default, at most an hour), plus leeway.
KEEP_SECONDS = 3600 + 120
CATCH_UP_SECONDS = 10.0


def subject(kind: str, ident: str) -> str:
    return f"revocations.{kind}.{ident}"


async def ensure_stream(bus: EventBus) -> None:
    config = StreamConfig(
        name=STREAM, subjects=["revocations.>"], max_msgs_per_subject=1, max_age=KEEP_SECONDS,
        storage=StorageType.FILE,
    )
    await bus.ensure_stream(config)  # only auth's NATS user may create or change it


async def publish(bus: EventBus, kind: str, ident: str) -> None:
    """Auth: `ident` of `kind` is revoked from now on (idempotent)."""
    await ensure_stream(bus)
    await bus.js.publish(subject(kind, ident), str(time.time()).encode(), stream=STREAM)


class Revocations:
    """The revoked sessions and API keys, followed live from the stream."""

    def __init__(self) -> None:
        self._revoked: dict[tuple[str, str], float] = {}
        self._seen_seq = 0
        self._subscription: JetStreamContext.PushSubscription | None = None

    def is_revoked(self, kind: str, ident: str) -> bool:
        return bool(ident) and (kind, ident) in self._revoked

    def _take(self, msg: Msg) -> None:
        parts = msg.subject.split(".", 2)
        if len(parts) == 3:
            self._revoked[(parts[1], parts[2])] = time.time()
        self._seen_seq = max(self._seen_seq, msg.metadata.sequence.stream)
        horizon = time.time() - KEEP_SECONDS
        if len(self._revoked) > 10_000:  # old entries: their tokens have expired anyway
            self._revoked = {k: t for k, t in self._revoked.items() if t > horizon}

    async def follow(self, bus: EventBus) -> None:
        """Subscribe from the stream's start and return once caught up with what was
        revoked before this process started, so no revoked token slips in at start."""
        await ensure_stream(bus)
        last = (await bus.js.stream_info(STREAM)).state.last_seq

        async def on_message(msg: Msg) -> None:
            self._take(msg)

        self._subscription = await bus.js.subscribe(
            "revocations.>", stream=STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=on_message
        )
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while self._seen_seq < last and time.monotonic() < deadline:  # noqa: ASYNC110 (a poll bounded by the deadline)
            await asyncio.sleep(0.05)
        if self._seen_seq < last:
            log.warning(
                "revocations: caught up to %d of %d in %.0f s; going on", self._seen_seq, last, CATCH_UP_SECONDS
            )

    async def close(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
