"""Builds the projection service: the gRPC server and, when this process runs workers,
the projection job workers (with numba warmed up for UMAP in the background)."""

from __future__ import annotations

import asyncio
import logging
import os

from embedviz.v1 import projection_pb2, projection_pb2_grpc
from services.common.app import Background, Built, Deps, new_server
from services.common.events import run_event_consumer, run_work_queue
from services.projection import maps
from services.projection.follow_ups import run_follow_ups
from services.projection.projection import KIND, Projections, in_daemon_thread
from services.projection.servicer import ProjectionServicer
from services.projection.sources import Sources

log = logging.getLogger(__name__)

SERVICE_NAMES = [projection_pb2.DESCRIPTOR.services_by_name["ProjectionService"].full_name]


async def _warm_umap() -> None:
    try:
        await in_daemon_thread(maps.warm_umap)
        log.info("umap is compiled and ready")
    except Exception:  # a slow first job is the worst that can come of it
        log.warning("warming up umap failed", exc_info=True)


async def build(deps: Deps) -> Built:
    maps.ensure_numba_cache()
    settings = deps.settings
    projections = Projections(deps, Sources(deps.channels, settings.embedding_addr, settings.ingest_addr))
    server, health = new_server(deps, SERVICE_NAMES)
    projection_pb2_grpc.add_ProjectionServiceServicer_to_server(ProjectionServicer(projections), server)

    async def follow_embedding_deletions(stop: asyncio.Event) -> None:
        await run_event_consumer(
            deps.bus, "events.embedding-deleted.>", "projection-embedding-deleted", projections.remove_for_embedding, stop
        )

    background: list[Background] = [follow_embedding_deletions]
    if settings.workers > 0:

        async def warm(stop: asyncio.Event) -> None:
            warming = asyncio.ensure_future(_warm_umap())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({warming, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            warming.cancel()  # a stopping process does not wait for the warm-up thread

        def worker() -> Background:
            async def work(stop: asyncio.Event) -> None:
                await run_work_queue(deps.bus, KIND, projections.run_job, stop, give_up=projections.give_up)

            return work

        async def follow_ups(stop: asyncio.Event) -> None:
            await run_follow_ups(deps.bus, projections.follow_up, stop)

        # EMBEDVIZ_PROJECTION_WARM_UP=0 skips it (a worker that only makes PCA / t-SNE maps)
        if os.environ.get("EMBEDVIZ_PROJECTION_WARM_UP", "1").strip() not in ("0", "false", "no"):
            background.append(warm)
        background.append(follow_ups)
        background.extend(worker() for _ in range(settings.workers))

    return Built(
        server=server,
        health=health,
        service_names=SERVICE_NAMES,
        listen_addr=settings.listen_addr(settings.projection_addr),
        background=background,
    )
