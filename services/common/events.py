"""NATS JetStream: job events (last value per job, then live) and work queues (their
consumer: services/common/consumer.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import AuthorizationError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from services.common import telemetry
from services.common.errors import Unavailable

log = logging.getLogger(__name__)

EVENTS_STREAM = "EMBEDVIZ_EVENTS"
WORK_STREAM = "EMBEDVIZ_WORK"


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
        """Connect as the NATS `user` (EMBEDVIZ_NATS_USER; none: whatever the URL says).

        The first connection fails within a second when NATS cannot be reached (ConnectionError),
        refuses the user (PermissionError) or its JetStream is not ready, so the caller decides
        how long to wait for it (services/common/app.py); once connected, the client
        reconnects by itself for as long as NATS is away."""
        await _probe(url, name, user, password)
        nc = await nats.connect(
            url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=1,
            user=user or None, password=password if user else None, inbox_prefix=inbox_prefix(user),
        )
        bus = cls(nc)
        try:
            await bus.ensure_streams()
        except BaseException:
            await bus.close()
            raise
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
        if config.name is None:
            raise ValueError("a stream's config needs a name")
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
        except (TimeoutError, NatsTimeoutError) as exc:  # a request NATS refused gets no answer
            if have is None:
                raise RuntimeError(
                    f"the NATS stream {config.name} does not exist and could not be created: only the auth "
                    "service's NATS user may create streams (docs/architecture.md), so start auth first"
                ) from exc
            log.warning("the NATS stream %s differs from this version's settings and could not be changed "
                        "(only auth's NATS user may); auth changes it when it starts", config.name)

    async def publish_event(self, kind: str, job_id: str, data: bytes) -> None:
        await self.js.publish(event_subject(kind, job_id), data, stream=EVENTS_STREAM, headers=_traced())

    async def publish_job_state(self, kind: str, job_id: str, data: bytes) -> None:
        """A job's new state for Watch streams, best effort: the job's row in PostgreSQL
        is the truth, and a Watch reloads it whenever events stop coming, so a job never
        fails because NATS is down for a while (it goes on, and Watch catches up)."""
        try:
            await self.js.publish(event_subject(kind, job_id), data, stream=EVENTS_STREAM, timeout=2,
                                  headers=_traced())
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_publish_warning > 10:
                self._last_publish_warning = now
                log.warning(
                    "could not publish %s %s's state (%s); Watch streams will reload it", kind, job_id, describe(exc)
                )

    async def follow_events(self, kind: str, job_id: str) -> AsyncGenerator[bytes | None, None]:
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
                except (TimeoutError, NatsTimeoutError):
                    yield None
                    continue
                except Exception as exc:
                    raise Unavailable(
                        "the live updates of this job were cut (the event bus restarted); watch again"
                    ) from exc
                yield msg.data
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def delete_events(self, kind: str, job_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.js.purge_stream(EVENTS_STREAM, subject=event_subject(kind, job_id))

    async def enqueue(self, kind: str, payload: dict[str, Any]) -> None:
        await self.js.publish(work_subject(kind), json.dumps(payload).encode(), stream=WORK_STREAM, headers=_traced())


async def _probe(url: str, name: str, user: str | None, password: str | None) -> None:
    """One short connection: a client told to reconnect for ever would also wait for ever,
    without a word, for a server that is not there yet."""
    seen: list[Exception] = []

    async def note(exc: Exception) -> None:
        seen.append(exc)

    try:
        probe = await nats.connect(
            url, name=f"{name}-probe", allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.2,
            connect_timeout=2, error_cb=note, user=user or None, password=password if user else None,
        )
    except Exception as exc:
        cause = describe(seen[-1]) if seen else describe(exc)
        if any(isinstance(e, AuthorizationError) or "authorization violation" in str(e).lower() for e in (exc, *seen)):
            # it answered: waiting will not help
            raise PermissionError(f"NATS at {where(url)} refused the user {user or '(none)'}: {cause}") from exc
        raise ConnectionError(f"NATS at {where(url)} cannot be reached: {cause}") from exc
    await probe.close()


def where(url: str) -> str:
    """A NATS URL for a log line: host and port, never the credentials it may carry."""
    return ", ".join(part.rsplit("@", 1)[-1].removeprefix("nats://").removeprefix("tls://") for part in url.split(","))


def _traced() -> dict[str, str] | None:
    """NATS headers that carry the current trace on to whoever handles the message."""
    return telemetry.trace_headers() or None


def describe(exc: BaseException) -> str:
    """An exception for a log line: some NATS errors have no message of their own."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
