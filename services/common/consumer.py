"""The one NATS JetStream consumer behind every work queue and event stream.

A durable pull consumer hands messages to a handler, one batch at a time, with one
failure policy for all of them:

- while the handler runs, the message is kept alive with in-progress acks, so a long job
  is not handed to another worker; if this process dies, the ack deadline passes and
  another worker gets the message;
- an error the classifier calls retryable is NAKed with a growing delay (5 s doubling to
  a minute), so a neighbour or PostgreSQL that is away for minutes is waited out; any
  other error terminates the message (the handler has said what went wrong where a person
  reads it);
- a message that cannot be decoded is terminated at once;
- on the last delivery, `on_last_delivery` runs instead of the handler (a job runner ends
  the job FAILED with its last error there), so nothing is dropped by JetStream unseen;
- when the consumer is stopped (cancelled), the message in hand is NAKed without delay and
  goes to another worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.common import telemetry
from services.common.errors import DomainError, Unavailable
from services.common.events import EVENTS_STREAM, EventBus, describe

log = logging.getLogger(__name__)

P = TypeVar("P")

ACK_WAIT_S = 60.0
MAX_DELIVER = 10
FIRST_RETRY_S = 5.0
LAST_ERROR_CHARS = 300
QUEUE_DEPTH_EVERY_S = 15.0  # how often a consumer's pending messages are read for /metrics


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message: which one it is, and what went wrong on the one before
    (as far as this process saw; None after a crash)."""

    number: int
    max_deliver: int
    subject: str
    last_error: str | None = None

    @property
    def is_last(self) -> bool:
        return self.number >= self.max_deliver

    @property
    def earlier_attempts(self) -> int:
        return self.number - 1


Handler = Callable[[P, Delivery], Awaitable[None]]
Classify = Callable[[BaseException], bool]


def retryable(exc: BaseException) -> bool:
    """The default classifier: a neighbour, NATS or PostgreSQL away for a while (worth a
    later try) is retryable; a DomainError is a verdict on the request, anything else a bug."""
    if isinstance(exc, Unavailable):
        return True
    if isinstance(exc, DomainError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, NatsTimeoutError))


def always_retry(exc: BaseException) -> bool:
    """For handlers that must run until they succeed (idempotent clean-ups after events)."""
    return True


def json_object(data: bytes) -> dict[str, Any]:
    """The decoder of every work and event message: a JSON object."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def retry_delay(delivery: int, first: float = FIRST_RETRY_S) -> float:
    """Seconds before a failed message's next try: doubling from `first`, at most a minute,
    so the nine tries span about six minutes (a restart of a neighbour or of PostgreSQL)."""
    return float(min(first * 2 ** max(delivery - 1, 0), 60.0))


@dataclass(frozen=True)
class ConsumerSettings:
    """How a consumer takes its messages (the defaults are the production values)."""

    ack_wait: float = ACK_WAIT_S
    batch: int = 1
    max_deliver: int = MAX_DELIVER
    first_retry: float = FIRST_RETRY_S
    deliver_all: bool = True  # events stream: every kept event, also those sent while we were down


class Consumer(Generic[P]):
    """A durable pull consumer of `subject` on `stream` named `durable`, shared by every
    replica that uses the same name."""

    def __init__(
        self,
        bus: EventBus,
        *,
        stream: str,
        subject: str,
        durable: str,
        handler: Handler[P],
        decode: Callable[[bytes], P],
        classify: Classify = retryable,
        on_last_delivery: Handler[P] | None = None,
        settings: ConsumerSettings = ConsumerSettings(),
    ) -> None:
        self._bus = bus
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self._handler = handler
        self._decode = decode
        self._classify = classify
        self._on_last_delivery = on_last_delivery
        self.settings = settings
        self._errors: dict[str, str] = {}  # the last error of each message this process retried

    async def run(self, stop: asyncio.Event) -> None:
        """Take messages until `stop` is set (or the task is cancelled)."""
        psub = await self._subscribe()
        depth = asyncio.create_task(self._report_depth(stop), name=f"{self.durable} depth")
        try:
            while not stop.is_set():
                try:
                    msgs = await psub.fetch(self.settings.batch, timeout=2)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except Exception as exc:  # NATS reconnecting; try again shortly
                    log.warning("fetching from %s (%s) failed: %s", self.subject, self.durable, describe(exc))
                    await asyncio.sleep(1)
                    continue
                for msg in msgs:
                    await self._deliver(msg)
        finally:
            depth.cancel()
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _report_depth(self, stop: asyncio.Event) -> None:
        """Now and then, how many messages wait for this consumer (and how many its workers
        hold) as JetStream counts them for all replicas: embedviz_queue_*_messages."""
        labels = (telemetry.service(), self.stream, self.durable)
        while not stop.is_set():
            try:
                info = await self._bus.js.consumer_info(self.stream, self.durable, timeout=5)
                telemetry.QUEUE_PENDING.labels(*labels).set(info.num_pending or 0)
                telemetry.QUEUE_ACK_PENDING.labels(*labels).set(info.num_ack_pending or 0)
            except Exception as exc:  # NATS away: the next round tries again
                log.debug("reading the depth of %s failed: %s", self.durable, describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=QUEUE_DEPTH_EVERY_S)

    async def _subscribe(self) -> Any:
        s = self.settings
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait,
            max_deliver=s.max_deliver,
            filter_subject=self.subject,
            deliver_policy=DeliverPolicy.ALL if s.deliver_all else DeliverPolicy.NEW,
        )
        try:  # creates it, or brings an existing one to these settings (ack wait, max deliver)
            await self._bus.js.add_consumer(self.stream, config)
        except Exception as exc:
            log.warning("could not create or update the consumer %s: %s", self.durable, describe(exc))
        return await self._bus.js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream)

    async def _deliver(self, msg: Msg) -> None:
        try:
            payload = self._decode(msg.data)
        except Exception as exc:
            log.error("dropping a malformed message on %s: %s", msg.subject, describe(exc))
            with contextlib.suppress(Exception):
                await msg.term()
            return
        key = f"{msg.subject}#{msg.metadata.sequence.stream if msg.metadata.sequence else ''}"
        delivery = Delivery(msg.metadata.num_delivered, self.settings.max_deliver, msg.subject, self._errors.get(key))
        handler = self._handler
        if delivery.is_last and self._on_last_delivery is not None:
            log.error("%s: delivery %d is the last; giving it up", msg.subject, delivery.number)
            handler = self._on_last_delivery
        alive = asyncio.create_task(self._keep_alive(msg))
        try:
            with telemetry.consumer_span(msg.subject, msg.headers, self.stream, self.durable):
                await handler(payload, delivery)
        except asyncio.CancelledError:
            # This worker is stopping: hand the message back at once, it resumes elsewhere.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as exc:
            if self._classify(exc) and not delivery.is_last:
                log.warning("%s failed (delivery %d of %d), retried later: %s", msg.subject, delivery.number,
                            delivery.max_deliver, describe(exc))
                self._errors[key] = describe_for_person(exc)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=retry_delay(delivery.number, self.settings.first_retry))
                return
            log.exception("%s failed (delivery %d of %d); not retried", msg.subject, delivery.number,
                          delivery.max_deliver)
            self._errors.pop(key, None)
            with contextlib.suppress(Exception):
                await msg.term()
            return
        finally:
            alive.cancel()
        self._errors.pop(key, None)
        with contextlib.suppress(Exception):
            await msg.ack()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.settings.ack_wait / 3)
            with contextlib.suppress(Exception):
                await msg.in_progress()


def describe_for_person(exc: BaseException) -> str:
    """An error for a job's record: a DomainError's own message, else the type and text."""
    if isinstance(exc, DomainError):
        return exc.message[:LAST_ERROR_CHARS]
    return describe(exc)[:LAST_ERROR_CHARS]


def event_consumer(
    bus: EventBus,
    subject: str,
    durable: str,
    handle: Callable[[P], Awaitable[object]],
    *,
    decode: Callable[[bytes], P],
    classify: Classify = always_retry,
    settings: ConsumerSettings = ConsumerSettings(batch=16),
) -> Consumer[P]:
    """A durable consumer of the events stream (e.g. `events.dataset-deleted.>`, one name
    per service), so events published while the service was down are handled when it comes
    back. An event is acked after `handle` returned; by default a failure is retried with
    backoff until the last delivery, so handlers must be idempotent."""

    async def handler(payload: P, delivery: Delivery) -> None:
        await handle(payload)

    return Consumer(bus, stream=EVENTS_STREAM, subject=subject, durable=durable, handler=handler, decode=decode,
                    classify=classify, settings=settings)
