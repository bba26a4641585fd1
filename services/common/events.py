"""NATS JetStream: job events (last value per job, then live) and work queues."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
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
from nats.js.errors import NotFoundError

from services.common.errors import Unavailable

log = logging.getLogger(__name__)

EVENTS_STREAM = "EMBEDVIZ_EVENTS"
WORK_STREAM = "EMBEDVIZ_WORK"
ACK_WAIT_SECONDS = 60.0
MAX_DELIVER = 10


def event_subject(kind: str, job_id: str) -> str:
    return f"events.{kind}.{job_id}"


def work_subject(kind: str) -> str:
    return f"work.{kind}"


def inbox_prefix(user: str | None) -> str:
    """Where replies to `user` arrive: `_INBOX.<user>`, the only subjects its NATS
    permissions let it subscribe to (services/common/nats_access.py)."""
    return f"_INBOX.{user}" if user else "_INBOX"


class EventBus:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._last_publish_warning = 0.0

    @classmethod
    async def connect(cls, url: str, name: str, user: str | None = None, password: str | None = None) -> EventBus:
        """Connect as the NATS `user` (EMBEDVIZ_NATS_USER; none: whatever the URL says)."""
        nc = await nats.connect(
            url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=1,
            user=user or None, password=password if user else None, inbox_prefix=inbox_prefix(user),
        )
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
            await self.ensure_stream(config)

    async def ensure_stream(self, config: StreamConfig) -> None:
        """Make the stream as `config` says, or leave it be if it is so already. Only auth's
        NATS user may create or change streams (services/common/nats_access.py): the other
        services find them made, since they start after auth."""
        try:
            have: StreamConfig | None = (await self.js.stream_info(config.name)).config
        except NotFoundError:
            have = None
        unset = StreamConfig(name=config.name).as_dict()  # the server fills these in its own way
        wanted = {k: v for k, v in config.as_dict().items() if v != unset.get(k)}
        found = have.as_dict() if have is not None else {}
        if have is not None and all(found.get(k) == v for k, v in wanted.items()):
            return
        try:
            if have is None:
                await self.js.add_stream(config)
            else:
                await self.js.update_stream(config)
        except (NatsTimeoutError, asyncio.TimeoutError) as exc:  # a request NATS refused gets no answer
            if have is None:
                raise RuntimeError(
                    f"the NATS stream {config.name} does not exist and could not be created: only the auth "
                    "service's NATS user may create streams (docs/architecture.md), so start auth first"
                ) from exc
            log.warning("the NATS stream %s differs from this version's settings and could not be changed "
                        "(only auth's NATS user may); auth changes it when it starts", config.name)

    async def publish_event(self, kind: str, job_id: str, data: bytes) -> None:
        await self.js.publish(event_subject(kind, job_id), data, stream=EVENTS_STREAM)

    async def publish_job_state(self, kind: str, job_id: str, data: bytes) -> None:
        """A job's new state for Watch streams, best effort: the job's row in PostgreSQL
        is the truth, and a Watch reloads it whenever events stop coming, so a job never
        fails because NATS is down for a while (it goes on, and Watch catches up)."""
        try:
            await self.js.publish(event_subject(kind, job_id), data, stream=EVENTS_STREAM, timeout=2)
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_publish_warning > 10:
                self._last_publish_warning = now
                log.warning("could not publish %s %s's state (%s); Watch streams will reload it", kind, job_id, describe(exc))

    async def follow_events(self, kind: str, job_id: str) -> AsyncIterator[bytes | None]:
        """The job's last event, then every new one. Yields None when `idle` seconds pass
        without an event, so a caller can send a heartbeat."""
        try:
            sub = await self.js.subscribe(
                event_subject(kind, job_id),
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                stream=EVENTS_STREAM,
            )
        except Exception as exc:
            raise Unavailable("the live updates of this job cannot be followed now (the event bus is away)") from exc
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=15)
                except (NatsTimeoutError, asyncio.TimeoutError):
                    yield None
                    continue
                except Exception as exc:
                    raise Unavailable("the live updates of this job were cut (the event bus restarted); watch again") from exc
                yield msg.data
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def delete_events(self, kind: str, job_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.js.purge_stream(EVENTS_STREAM, subject=event_subject(kind, job_id))

    async def enqueue(self, kind: str, payload: dict[str, Any]) -> None:
        await self.js.publish(work_subject(kind), json.dumps(payload).encode(), stream=WORK_STREAM)


def describe(exc: BaseException) -> str:
    """An exception for a log line: some NATS errors have no message of their own."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


WorkHandler = Callable[[dict[str, Any], int], Awaitable[None]]
# Called instead of the handler on a job's last delivery: (payload, attempts so far, the
# last error this process saw for it, if any). It must end the job (FAILED, with a
# message a person understands); the message is then removed from the queue.
GiveUp = Callable[[dict[str, Any], int, str | None], Awaitable[None]]


def retry_delay(delivery: int, first: float = 5.0) -> float:
    """Seconds before a failed job's next try: doubling from `first`, at most a minute, so
    the nine tries span about six minutes (a restart of a neighbour or of PostgreSQL)."""
    return float(min(first * 2 ** max(delivery - 1, 0), 60.0))


def crash_message(what: str, attempts: int, last_error: str | None) -> str:
    """What a person reads when a job was given up after its worker failed again and again."""
    if last_error:
        return f"{what} failed {attempts} times and was given up; the last error: {last_error}"
    return (f"the worker stopped {attempts} times while working on {what} (a crash or a restart each "
            "time); it was given up. Try again, perhaps with less data")


async def run_work_queue(
    bus: EventBus,
    kind: str,
    handler: WorkHandler,
    stop: asyncio.Event,
    give_up: GiveUp | None = None,
    *,
    ack_wait: float = ACK_WAIT_SECONDS,
    max_deliver: int = MAX_DELIVER,
    first_retry: float = 5.0,
) -> None:
    """Take work from the kind's queue one message at a time until `stop` is set.

    The handler gets the payload and the delivery count (above 1 means a worker died
    on it before). While it runs, the message is kept alive with in-progress acks, so a
    long job is not handed to another worker; if this process dies, the ack deadline
    passes and another worker gets the message. The last delivery (`max_deliver`) is not
    run: `give_up` ends the job instead, so a job whose worker dies on every attempt
    ends FAILED rather than RUNNING forever."""
    psub = await bus.js.pull_subscribe(
        work_subject(kind),
        durable=f"{kind}-workers",
        stream=WORK_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
        ),
    )
    errors: dict[str, str] = {}
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(1, timeout=2)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            except Exception as exc:  # NATS reconnecting; try again shortly
                log.warning("fetching %s work failed: %s", kind, describe(exc))
                await asyncio.sleep(1)
                continue
            for msg in msgs:
                await _handle(msg, handler, kind, give_up, errors, ack_wait, max_deliver, first_retry)
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()


async def _handle(
    msg: Msg,
    handler: WorkHandler,
    kind: str,
    give_up: GiveUp | None,
    errors: dict[str, str],
    ack_wait: float,
    max_deliver: int,
    first_retry: float,
) -> None:
    async def keep_alive() -> None:
        while True:
            await asyncio.sleep(ack_wait / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    try:
        payload = json.loads(msg.data)
    except ValueError:
        log.error("dropping malformed %s work message", kind)
        await msg.term()
        return
    job = str(payload.get("id", ""))
    delivery = msg.metadata.num_delivered
    if give_up is not None and delivery >= max_deliver:
        log.error("%s job %s: delivery %d is the last; giving it up", kind, job, delivery)
        await give_up(payload, delivery - 1, errors.pop(job, None))
        await msg.ack()
        return
    alive = asyncio.create_task(keep_alive())
    try:
        await handler(payload, delivery)
    except asyncio.CancelledError:
        # This worker is stopping: hand the job back at once, it resumes elsewhere.
        with contextlib.suppress(Exception):
            await msg.nak()
        raise
    except Exception as exc:
        log.exception("%s job %s crashed (delivery %d of %d); it will be retried", kind, job, delivery, max_deliver)
        errors[job] = describe(exc)[:300]
        with contextlib.suppress(Exception):
            await msg.nak(delay=retry_delay(delivery, first_retry))
        return
    finally:
        alive.cancel()
    errors.pop(job, None)
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
                log.warning("fetching %s events failed: %s", subject, describe(exc))
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
