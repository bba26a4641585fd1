"""The outbox: messages other services must hear about (work for the queue, a deletion)
are written to the service's own `outbox` table in the same transaction as the change
they announce, and a relay publishes them to NATS JetStream afterwards.

So a process killed between its commit and its publish loses nothing: the row is still
there when it (or another replica) starts again, and the relay sends it then. A message
is published with its row's id as JetStream's message id (`Nats-Msg-Id`), so a resend of
one that did reach NATS before the crash (the row was not yet deleted) is dropped by the
stream as a duplicate (within the stream's duplicate window, two minutes by default).

The relay wakes right after a commit that added a message (in this process) and also
reads the table every `poll` seconds, which delivers what a killed process or another
process (the embedding worker) left behind. Several relays on one schema share the rows
through `FOR UPDATE SKIP LOCKED`. Job progress for Watch streams is not sent this way: it
is best effort (EventBus.publish_job_state), the job's row being the truth."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from services.common import telemetry
from services.common.config import SettingsError
from services.common.events import EVENTS_STREAM, WORK_STREAM, EventBus, describe, event_subject, work_subject

log = logging.getLogger(__name__)

TABLE = "outbox"
MSG_ID_HEADER = "Nats-Msg-Id"
_tables: dict[str, Table] = {}


def outbox_columns() -> list[Column[Any]]:
    """The outbox's columns, new each call: for `outbox_table` and for the migration of each
    service that creates the table (`0003_outbox`)."""
    return [
        # the order messages were written in; the id is what JetStream dedups by
        Column("seq", BigInteger, Identity(), primary_key=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("subject", String(300), nullable=False),
        Column("stream", String(64), nullable=False),
        Column("data", LargeBinary, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
    ]


def trace_column() -> Column[Any]:
    """The trace a message belongs to, as NATS headers (JSON: traceparent, tracestate): the
    relay sends them along, so the consumer's work joins the trace of the call that queued
    it. Added after the table by each service's `0006_outbox_trace` (projection: 0007)."""
    return Column("headers", Text, nullable=True)


def outbox_table(schema: str) -> Table:
    """The outbox table of a service's schema (each service's migrations create it)."""
    table = _tables.get(schema)
    if table is None:
        table = Table(TABLE, MetaData(schema=schema), *outbox_columns(), trace_column())
        _tables[schema] = table
    return table


def positive_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} is {raw!r}; it must be a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise SettingsError(f"{name} is {raw}; it must be more than 0 seconds")
    return value


@dataclass(frozen=True)
class OutboxSettings:
    """EMBEDVIZ_OUTBOX_POLL_S: how often the relay reads the table without being woken
    (what another process or a killed one left); a commit in this process wakes it at once."""

    poll: float = 2.0
    batch: int = 100

    @classmethod
    def from_env(cls) -> OutboxSettings:
        return cls(poll=positive_seconds("EMBEDVIZ_OUTBOX_POLL_S", 2.0))


class Outbox:
    """A service's outbox: `add_*` inside the caller's transaction, `relay` in the background."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bus: EventBus,
        schema: str,
        settings: OutboxSettings | None = None,
    ) -> None:
        self._sessions = sessions
        self._bus = bus
        self._table = outbox_table(schema)
        self._settings = settings or OutboxSettings.from_env()
        self._wake = asyncio.Event()
        self._last_warning = 0.0

    # --- writing, inside the caller's transaction -------------------------------------------

    async def add(self, session: AsyncSession, subject: str, stream: str, data: bytes) -> str:
        """Queue `data` for `subject`; it is sent only if (and once) the caller commits.
        Returns the message id."""
        message_id = uuid.uuid4().hex
        trace = telemetry.trace_headers()
        await session.execute(
            insert(self._table).values(
                id=message_id, subject=subject, stream=stream, data=data, create_time=datetime.now(UTC),
                headers=json.dumps(trace) if trace else None,
            )
        )
        sync_session = session.sync_session
        if not event.contains(sync_session, "after_commit", self._committed):
            event.listen(sync_session, "after_commit", self._committed)
        return message_id

    async def add_work(self, session: AsyncSession, kind: str, payload: dict[str, Any]) -> str:
        """A message for the `kind` work queue (what EventBus.enqueue sent after the commit)."""
        return await self.add(session, work_subject(kind), WORK_STREAM, json.dumps(payload).encode())

    async def add_event(self, session: AsyncSession, kind: str, key: str, payload: dict[str, Any]) -> str:
        """A JSON event on `events.{kind}.{key}` (e.g. a dataset's deletion)."""
        return await self.add(session, event_subject(kind, key), EVENTS_STREAM, json.dumps(payload).encode())

    def _committed(self, session: Session) -> None:
        # runs on the event loop's thread (SQLAlchemy's async sessions run there)
        self._wake.set()

    # --- sending ----------------------------------------------------------------------------

    async def deliver_pending(self) -> int:
        """Publish every message in the table, oldest first, and delete what was published;
        returns how many. A failed publish stops the round (what was sent is deleted) and
        raises; the rest stays for the next round."""
        sent = 0
        table = self._table
        while True:
            async with self._sessions() as session:
                rows = (
                    await session.execute(
                        select(table.c.seq, table.c.id, table.c.subject, table.c.stream, table.c.data,
                               table.c.headers)
                        .order_by(table.c.seq)
                        .limit(self._settings.batch)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                if not rows:
                    return sent
                done: list[int] = []
                failure: BaseException | None = None
                for row in rows:
                    try:
                        await self._bus.js.publish(
                            row.subject, row.data, timeout=5, stream=row.stream,
                            headers={**json.loads(row.headers or "{}"), MSG_ID_HEADER: row.id},
                        )
                    except Exception as exc:
                        failure = exc
                        break
                    done.append(row.seq)
                if done:
                    await session.execute(delete(table).where(table.c.seq.in_(done)))
                    await session.commit()
                    sent += len(done)
                if failure is not None:
                    raise failure
                if len(rows) < self._settings.batch:
                    return sent

    def wake(self) -> None:
        self._wake.set()

    async def relay(self, stop: asyncio.Event) -> None:
        """Background task: deliver at start (what a killed process left), after every
        commit that added a message, and every `poll` seconds; back off while NATS or
        PostgreSQL is away. Never ends on its own but through `stop`."""
        failures = 0
        while not stop.is_set():
            self._wake.clear()
            try:
                sent = await self.deliver_pending()
                failures = 0
                if sent:
                    log.debug("outbox %s: published %d messages", self._table.schema, sent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                now = time.monotonic()
                if now - self._last_warning > 10:
                    self._last_warning = now
                    log.warning("outbox %s: could not publish (%s); retrying", self._table.schema, describe(exc))
            if failures:  # NATS or PostgreSQL away: back off, whatever wakes us
                wait, waiters = min(0.5 * 2 ** min(failures, 4), self._settings.poll * 4), [stop.wait()]
            else:
                wait, waiters = self._settings.poll, [stop.wait(), self._wake.wait()]
            tasks = [asyncio.create_task(w) for w in waiters]
            try:
                await asyncio.wait(tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
