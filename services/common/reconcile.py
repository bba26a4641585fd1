"""The reconciler: a periodic task in each service that removes children whose parent is
gone, for whatever reason the deletion event did not do it (a child made in the moment
its parent was deleted, a row written behind the service's back, a blob whose row went
while it was being written).

- Rows made from another service's resource: the deletion events (`events.dataset-deleted.*`,
  `events.embedding-deleted.*`) stay in the events stream for its max age (7 days, one
  message per resource). The reconciler asks the stream which resources were deleted
  (`deleted_ids`: one stream-info request with a subject filter) and removes the rows made
  from them with the same code as the event handler. So a parent counts as gone once its
  deletion was announced; the outbox makes sure every deletion is.
- Blobs with no row: each service lists its own top folder in the blob store (ingest
  `datasets/` and `uploads/`, embedding `embeddings/`, projection `projections/`) and removes
  an entry whose id has no row, once nothing in it changed for `grace` seconds (an upload or
  a job still writing keeps its bytes).

EMBEDVIZ_RECONCILE_INTERVAL_S (default 600) sets how often, EMBEDVIZ_RECONCILE_GRACE_S
(default 3600) how old an entry with no row must be before it goes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import nats.errors
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from services.common.blobs import BlobStore
from services.common.db import is_outage
from services.common.events import EVENTS_STREAM, EventBus, describe
from services.common.outbox import positive_seconds

log = logging.getLogger(__name__)

Sweep = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class ReconcileSettings:
    interval: float = 600.0
    grace: float = 3600.0

    @classmethod
    def from_env(cls) -> ReconcileSettings:
        return cls(
            interval=positive_seconds("EMBEDVIZ_RECONCILE_INTERVAL_S", 600.0),
            grace=positive_seconds("EMBEDVIZ_RECONCILE_GRACE_S", 3600.0),
        )


async def deleted_ids(bus: EventBus, kind: str) -> set[str]:
    """The ids whose `events.{kind}.{id}` is in the events stream (e.g. kind
    "dataset-deleted": every dataset deleted within the stream's max age)."""
    info = await bus.js.stream_info(EVENTS_STREAM, subjects_filter=f"events.{kind}.>")
    subjects = info.state.subjects or {}
    return {subject.rsplit(".", 1)[1] for subject in subjects}


def stale_entries(blobs: BlobStore, prefix: str, grace: float, suffix: str = "") -> dict[str, str]:
    """{id: key} of what lies under `prefix` and did not change for `grace` seconds; an
    entry's id is its name less `suffix` (e.g. ".part"). Entries without a time are kept."""
    cutoff = datetime.now(UTC) - timedelta(seconds=grace)
    stale: dict[str, str] = {}
    for name, mtime in blobs.children(prefix).items():
        if mtime is None or mtime > cutoff or (suffix and not name.endswith(suffix)):
            continue
        stale[name.removesuffix(suffix) if suffix else name] = f"{prefix}/{name}"
    return stale


def remove_unowned(blobs: BlobStore, stale: dict[str, str], live: Collection[str]) -> list[str]:
    """Delete the entries of `stale` whose id is not in `live`; returns their keys."""
    gone = []
    for entry_id, key in stale.items():
        if entry_id in live:
            continue
        if blobs.is_folder(key):
            blobs.delete_dir(key)
        else:
            blobs.delete(key)
        gone.append(key)
    return gone


class Reconciler:
    """Runs the service's sweeps at start and every `interval` seconds until stopped. A
    sweep that fails (PostgreSQL or NATS away) is logged and tried again next round."""

    def __init__(self, name: str, sweeps: Sequence[Sweep], settings: ReconcileSettings | None = None) -> None:
        self.name = name
        self.sweeps = list(sweeps)
        self.settings = settings or ReconcileSettings.from_env()

    async def run_once(self) -> int:
        removed = 0
        for sweep in self.sweeps:
            try:
                removed += await sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                what = getattr(sweep, "__name__", "a sweep")
                if is_outage(exc) or isinstance(exc, (TimeoutError, nats.errors.Error)):  # away for a while
                    log.warning("%s reconciler: %s skipped, NATS or PostgreSQL is away (%s)", self.name, what,
                                describe(exc))
                else:
                    log.exception("%s reconciler: %s failed; trying again next round", self.name, what)
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            removed = await self.run_once()
            if removed:
                log.info("%s reconciler removed %d orphans", self.name, removed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.interval)


async def existing(
    sessions: async_sessionmaker[AsyncSession], column: InstrumentedAttribute[str], ids: Collection[str]
) -> set[str]:
    """Those of `ids` that are in `column` (a table's id), asked in chunks."""
    wanted = list(ids)
    found: set[str] = set()
    async with sessions() as session:
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start:start + 1000]
            found.update((await session.scalars(select(column).where(column.in_(chunk)))).all())
    return found


async def remove_blobs_without_rows(
    sessions: async_sessionmaker[AsyncSession],
    blobs: BlobStore,
    prefix: str,
    column: InstrumentedAttribute[str],
    grace: float,
    suffix: str = "",
) -> int:
    """Remove what lies under `prefix` with no row in `column`, unchanged for `grace` seconds."""
    stale = await asyncio.to_thread(stale_entries, blobs, prefix, grace, suffix)
    if not stale:
        return 0
    live = await existing(sessions, column, stale)
    gone = await asyncio.to_thread(remove_unowned, blobs, stale, live)
    for key in gone:
        log.warning("removed %s: no row owns it", key)
    return len(gone)
