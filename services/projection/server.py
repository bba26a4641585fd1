"""Builds the projection service: the gRPC server and, when this process runs workers,
the projection job workers with one fitting child process each (fits.py; numba warmed up
for UMAP there, in the background)."""

from __future__ import annotations

import asyncio
import logging

from embedviz.v1 import projection_pb2, projection_pb2_grpc
from services.common.app import Background, Built, Deps, new_server
from services.common.consumer import event_consumer, json_object
from services.common.reconcile import ReconcileSettings
from services.common.runner import JobRunner, JobSweeper, RunnerSettings
from services.projection import fits, maps, orphans, vectors
from services.projection.follow_ups import follow_ups
from services.projection.job import MapJobs
from services.projection.reads import MapReads
from services.projection.records import ProjectionRecords
from services.projection.servicer import ProjectionServicer
from services.projection.settings import ProjectionSettings
from services.projection.sources import Sources

log = logging.getLogger(__name__)

SERVICE_NAMES = [projection_pb2.DESCRIPTOR.services_by_name["ProjectionService"].full_name]


async def build(deps: Deps, own: ProjectionSettings | None = None) -> Built:
    """`own`: this service's settings, read when the process started (else now)."""
    maps.ensure_numba_cache()  # the fitting children inherit NUMBA_CACHE_DIR
    settings = deps.settings
    own = own or ProjectionSettings.from_env()
    cache = own.cache_path(settings)
    fit_pool = fits.Fits(slots=max(1, settings.workers), root=cache / "fits", warm=own.warm_up)
    vector_files = vectors.VectorFiles(cache / "vectors", own.vector_cache_bytes)
    sources = Sources(deps.channels, settings.embedding_addr, settings.ingest_addr)
    sessions = deps.db.sessions
    records = ProjectionRecords(
        sessions, deps.bus, deps.access, deps.delegated, deps.blobs, sources, vector_files, own
    )
    reads = MapReads(records, sessions, deps.blobs, sources, vector_files)
    jobs = MapJobs(sessions, deps.blobs, deps.delegated, sources, fit_pool, records.publish)
    server, health = new_server(deps, SERVICE_NAMES)
    projection_pb2_grpc.add_ProjectionServiceServicer_to_server(ProjectionServicer(records, reads), server)

    async def follow_embedding_deletions(stop: asyncio.Event) -> None:
        await event_consumer(
            deps.bus, "events.embedding-deleted.>", "projection-embedding-deleted", records.remove_for_embedding,
            decode=json_object,
        ).run(stop)

    background: list[Background] = [follow_embedding_deletions, records.outbox.relay]
    reconciler = orphans.reconciler(
        sessions, deps.bus, deps.blobs, records.remove_for_embedding, ReconcileSettings.from_env()
    )
    background.append(reconciler.run)  # projections of deleted embeddings, map files with no row
    if settings.workers > 0:

        async def fitting_processes(stop: asyncio.Event) -> None:
            await fit_pool.run(stop)  # starts (and warms) one child per worker; kills them on stop

        async def follow_up_projections(stop: asyncio.Event) -> None:
            await follow_ups(deps.bus, records.follow_up).run(stop)

        runner_settings = RunnerSettings.from_env()
        mappers = [JobRunner(sessions, deps.bus, jobs.map_job(), runner_settings, slot)
                   for slot in range(settings.workers)]
        background.append(fitting_processes)
        background.append(follow_up_projections)
        background.extend(mapper.run for mapper in mappers)
        # stalled maps are queued again or failed (services/common/runner.py)
        background.append(JobSweeper(mappers[:1], runner_settings.sweep_every).run)

    return Built(
        server=server,
        health=health,
        service_names=SERVICE_NAMES,
        listen_addr=settings.listen_addr(settings.projection_addr),
        background=background,
    )
