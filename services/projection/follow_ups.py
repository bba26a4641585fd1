"""Follow-up projections: the projection service reads every embedding event from NATS
through a durable consumer of its own, so an embedding that succeeds while no projection
service runs is still picked up when one starts; each one that asked for it
(project_when_done) gets its default projection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common.errors import DomainError
from services.common.events import EVENTS_STREAM, EventBus, describe

log = logging.getLogger(__name__)

SUBJECT = "events.embedding.*"
DURABLE = "projection-follow-ups"
ACK_WAIT_SECONDS = 60.0
MAX_DELIVER = 10


async def run_follow_ups(bus: EventBus, handle: Callable[[bytes], Awaitable[object]], stop: asyncio.Event) -> None:
    """Hand each embedding event to `handle` until `stop` is set. A failure that may pass
    (a service down) is retried later; anything else is logged and the event dropped."""
    psub = await bus.js.pull_subscribe(
        SUBJECT,
        durable=DURABLE,
        stream=EVENTS_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=MAX_DELIVER,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=SUBJECT,
        ),
    )
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(32, timeout=2)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            except Exception as exc:  # NATS reconnecting; try again shortly
                log.warning("fetching embedding events failed: %s", describe(exc))
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                try:
                    await handle(msg.data)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    raise
                except (DomainError, grpc.aio.AioRpcError, OSError) as exc:
                    log.warning("follow-up of %s failed, will retry: %s", msg.subject, exc)
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=5)
                    continue
                except Exception:
                    log.exception("follow-up of %s failed; event dropped", msg.subject)
                await msg.ack()
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
