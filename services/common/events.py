"""NATS JetStream: job events (last value per job, then live) and work queues."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

log = logging.getLogger(__name__)

EVENTS_STREAM = "EMBEDVIZ_EVENTS"
WORK_STREAM = "EMBEDVIZ_WORK"
ACK_WAIT_SECONDS = 60.0
MAX_DELIVER = 10


def event_subject(kind: str, job_id: str) -> str:
    return f"events.{kind}.{job_id}"


def work_subject(kind: str) -> str:
    return f"work.{kind}"


class EventBus:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    @classmethod
    async def connect(cls, url: str, name: str) -> EventBus:
        nc = await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=1)
        bus = cls(nc)
        await bus.ensure_streams()
        return bus

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()

    async def ensure_streams(self) -> None:
        configs = [
            StreamConfig(
                name=EVENTS_STREAM,
                subjects=["events.>"],
                max_msgs_per_subject=1,
                storage=StorageType.FILE,
                max_age=7 * 24 * 3600,
            ),
            StreamConfig(
                name=WORK_STREAM,
                subjects=["work.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            ),
        ]
        for config in configs:
            try:
                await self.js.add_stream(config)
            except BadRequestError:
                await self.js.update_stream(config)

    async def publish_event(self, kind: str, job_id: str, data: bytes) -> None:
        await self.js.publish(event_subject(kind, job_id), data, stream=EVENTS_STREAM)

    async def follow_events(self, kind: str, job_id: str) -> AsyncIterator[bytes | None]:
        """The job's last event, then every new one. Yields None when `idle` seconds pass
        without an event, so a caller can send a heartbeat."""
        sub = await self.js.subscribe(
            event_subject(kind, job_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            stream=EVENTS_STREAM,
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=15)
                except NatsTimeoutError:
                    yield None
                    continue
                yield msg.data
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def delete_events(self, kind: str, job_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.js.purge_stream(EVENTS_STREAM, subject=event_subject(kind, job_id))

    async def enqueue(self, kind: str, payload: dict[str, Any]) -> None:
        await self.js.publish(work_subject(kind), json.dumps(payload).encode(), stream=WORK_STREAM)


def _describe(exc: BaseException) -> str:
    """An exception for a log line: some NATS errors have no message of their own."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


WorkHandler = Callable[[dict[str, Any], int], Awaitable[None]]


async def run_work_queue(
    bus: EventBus,
    kind: str,
    handler: WorkHandler,
    stop: asyncio.Event,
) -> None:
    """Take work from the kind's queue one message at a time until `stop` is set.

    The handler gets the payload and the delivery count (above 1 means a worker died
    on it before). While it runs, the message is kept alive with in-progress acks, so a
    long job is not handed to another worker; if this process dies, the ack deadline
    passes and another worker gets the message."""
    psub = await bus.js.pull_subscribe(
        work_subject(kind),
        durable=f"{kind}-workers",
        stream=WORK_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=MAX_DELIVER,
        ),
    )
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(1, timeout=2)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            except Exception as exc:  # NATS reconnecting; try again shortly
                log.warning("fetching %s work failed: %s", kind, _describe(exc))
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                await _handle(msg, handler, kind)
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()


async def _handle(msg: Msg, handler: WorkHandler, kind: str) -> None:
    async def keep_alive() -> None:
        while True:
            await asyncio.sleep(ACK_WAIT_SECONDS / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    try:
        payload = json.loads(msg.data)
    except ValueError:
        log.error("dropping malformed %s work message", kind)
        await msg.term()
        return
    alive = asyncio.create_task(keep_alive())
    try:
        await handler(payload, msg.metadata.num_delivered)
    except asyncio.CancelledError:
        # This worker is stopping: hand the job back at once, it resumes elsewhere.
        with contextlib.suppress(Exception):
            await msg.nak()
        raise
    except Exception:
        log.exception("%s job %s crashed; it will be retried", kind, payload.get("id"))
        with contextlib.suppress(Exception):
            await msg.nak(delay=5)
        return
    finally:
        alive.cancel()
    await msg.ack()


EventHandler = Callable[[dict[str, Any]], Awaitable[None]]


async def run_event_consumer(
    bus: EventBus,
    subject: str,
    durable: str,
    handler: EventHandler,
    stop: asyncio.Event,
) -> None:
    """Hand every JSON event on `subject` (e.g. `events.dataset-deleted.>`) to `handler`,
    through a durable consumer of the events stream named `durable` (one per service), so
    events published while the service was down are handled when it comes back. An event
    is acked after the handler returned; a handler that raises gets it again in 5 s, so
    handlers must be idempotent."""
    psub = await bus.js.pull_subscribe(
        subject,
        durable=durable,
        stream=EVENTS_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_SECONDS,
            max_deliver=MAX_DELIVER,
        ),
    )
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(10, timeout=2)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            except Exception as exc:  # NATS reconnecting; try again shortly
                log.warning("fetching %s events failed: %s", subject, _describe(exc))
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                try:
                    payload = json.loads(msg.data)
                except ValueError:
                    log.error("dropping a malformed event on %s", msg.subject)
                    await msg.term()
                    continue
                try:
                    await handler(payload)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    raise
                except Exception:
                    log.exception("handling event %s failed; it comes again", msg.subject)
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=5)
                    continue
                await msg.ack()
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
