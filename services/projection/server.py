"""Builds the projection service: the gRPC server and, when this process runs workers,
the projection job workers with one fitting child process each (fits.py; numba warmed up
for UMAP there, in the background)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from embedviz.v1 import projection_pb2, projection_pb2_grpc
from services.common.app import Background, Built, Deps, new_server
from services.common.events import run_event_consumer, run_work_queue
from services.common.config import Settings
from services.common.reconcile import ReconcileSettings
from services.projection import fits, maps, orphans, vectors
from services.projection.follow_ups import run_follow_ups
from services.projection.job import MapJobs
from services.projection.reads import MapReads
from services.projection.records import ProjectionRecords
from services.projection.rules import KIND
from services.projection.servicer import ProjectionServicer
from services.projection.sources import Sources

log = logging.getLogger(__name__)

SERVICE_NAMES = [projection_pb2.DESCRIPTOR.services_by_name["ProjectionService"].full_name]


def cache_dir(settings: Settings) -> Path:
    """EMBEDVIZ_PROJECTION_CACHE_DIR: local files of this service (memory-mapped vectors,
    the fits' arrays); default `$EMBEDVIZ_DATA_DIR/cache/projection`."""
    configured = os.environ.get("EMBEDVIZ_PROJECTION_CACHE_DIR", "").strip()
    return Path(configured) if configured else settings.data_dir / "cache" / "projection"


def vector_cache_bytes() -> int:
    """EMBEDVIZ_PROJECTION_VECTOR_CACHE_MB: disk the memory-mapped search vectors may use."""
    raw = os.environ.get("EMBEDVIZ_PROJECTION_VECTOR_CACHE_MB", "").strip()
    try:
        megabytes = int(raw) if raw else vectors.DEFAULT_BUDGET_BYTES >> 20
    except ValueError:
        raise ValueError(f"EMBEDVIZ_PROJECTION_VECTOR_CACHE_MB is {raw!r}; it must be a whole number of megabytes") from None
    return max(0, megabytes) << 20


async def build(deps: Deps) -> Built:
    maps.ensure_numba_cache()  # the fitting children inherit NUMBA_CACHE_DIR
    settings = deps.settings
    cache = cache_dir(settings)
    # EMBEDVIZ_PROJECTION_WARM_UP=0 skips the warm-up (a worker that only makes PCA / t-SNE maps)
    warm = os.environ.get("EMBEDVIZ_PROJECTION_WARM_UP", "1").strip() not in ("0", "false", "no")
    fit_pool = fits.Fits(slots=max(1, settings.workers), root=cache / "fits", warm=warm)
    vector_files = vectors.VectorFiles(cache / "vectors", vector_cache_bytes())
    sources = Sources(deps.channels, settings.embedding_addr, settings.ingest_addr)
    sessions = deps.db.sessions
    records = ProjectionRecords(sessions, deps.bus, deps.access, deps.delegated, deps.blobs, sources, vector_files)
    reads = MapReads(records, sessions, deps.blobs, sources, vector_files)
    jobs = MapJobs(sessions, deps.blobs, deps.delegated, sources, fit_pool, records.publish)
    server, health = new_server(deps, SERVICE_NAMES)
    projection_pb2_grpc.add_ProjectionServiceServicer_to_server(ProjectionServicer(records, reads), server)

    async def follow_embedding_deletions(stop: asyncio.Event) -> None:
        await run_event_consumer(
            deps.bus, "events.embedding-deleted.>", "projection-embedding-deleted", records.remove_for_embedding, stop
        )

    background: list[Background] = [follow_embedding_deletions, records.outbox.relay]
    reconciler = orphans.reconciler(
        sessions, deps.bus, deps.blobs, records.remove_for_embedding, ReconcileSettings.from_env()
    )
    background.append(reconciler.run)  # projections of deleted embeddings, map files with no row
    if settings.workers > 0:

        async def fitting_processes(stop: asyncio.Event) -> None:
            await fit_pool.run(stop)  # starts (and warms) one child per worker; kills them on stop

        def worker() -> Background:
            async def work(stop: asyncio.Event) -> None:
                await run_work_queue(deps.bus, KIND, jobs.run_job, stop, give_up=jobs.give_up)

            return work

        async def follow_ups(stop: asyncio.Event) -> None:
            await run_follow_ups(deps.bus, records.follow_up, stop)

        background.append(fitting_processes)
        background.append(follow_ups)
        background.extend(worker() for _ in range(settings.workers))

    return Built(
        server=server,
        health=health,
        service_names=SERVICE_NAMES,
        listen_addr=settings.listen_addr(settings.projection_addr),
        background=background,
    )
