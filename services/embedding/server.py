"""Builds the embedding service: servicers, health, reflection, and the job workers; and
the worker-only process (`python -m services.embedding worker`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from embedviz.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.app import Background, Built, Deps, close_deps, new_server, open_deps
from services.common.config import Settings
from services.common.consumer import event_consumer, json_object
from services.common.outbox import Outbox
from services.common.reconcile import ReconcileSettings
from services.common.server import configure_logging
from services.embedding import orphans
from services.embedding.datasets import IngestDatasets
from services.embedding.embeddings import Embeddings
from services.embedding.encoder import ModelRegistry
from services.embedding.servicer import EmbeddingInternalServicer, EmbeddingServicer
from services.embedding.settings import EmbeddingSettings
from services.embedding.worker import EmbeddingWorker

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"

SERVICE_NAMES = [
    embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
    embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingInternalService"].full_name,
]


def make_embeddings(deps: Deps, settings: EmbeddingSettings) -> Embeddings:
    return Embeddings(
        db=deps.db,
        bus=deps.bus,
        blobs=deps.blobs,
        access=deps.access,
        models=ModelRegistry(deps.settings.model_path, settings),
        datasets=IngestDatasets(deps.channels.get(deps.settings.ingest_addr)),
        outbox=Outbox(deps.db.sessions, deps.bus, "embedding"),
    )


async def preload(embeddings: Embeddings) -> None:
    """Load the default model before the first job needs it."""
    try:
        await embeddings.models.load("")
    except Exception as exc:
        log.error("the default model could not be loaded ahead of time: %s", exc)


def workers(embeddings: Embeddings, deps: Deps, settings: EmbeddingSettings, count: int) -> list[EmbeddingWorker]:
    return [EmbeddingWorker(embeddings, deps.delegated, settings, slot) for slot in range(count)]


async def build(deps: Deps, own: EmbeddingSettings | None = None) -> Built:
    """`own`: this service's settings, read when the process started (else now)."""
    settings = own or EmbeddingSettings.from_env()
    embeddings = make_embeddings(deps, settings)
    server, health = new_server(deps, SERVICE_NAMES)
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(embeddings), server)
    embedding_pb2_grpc.add_EmbeddingInternalServiceServicer_to_server(EmbeddingInternalServicer(embeddings), server)

    async def follow_dataset_deletions(stop: asyncio.Event) -> None:
        await event_consumer(
            deps.bus, "events.dataset-deleted.>", "embedding-dataset-deleted", embeddings.remove_for_dataset,
            decode=json_object,
        ).run(stop)

    count = settings.workers if settings.workers >= 0 else deps.settings.workers
    # the outbox's relay: work and deletion events, after their commit
    background: list[Background] = [follow_dataset_deletions, embeddings.outbox.relay]
    background.append(orphans.reconciler(embeddings, ReconcileSettings.from_env()).run)  # a deleted dataset's leftovers
    if count > 0:

        async def warm(stop: asyncio.Event) -> None:
            await preload(embeddings)

        slots = workers(embeddings, deps, settings, count)
        background += [warm, *(w.run for w in slots), slots[0].sweep]  # sweep: stalled jobs (runner.py)
    return Built(
        server=server,
        health=health,
        service_names=SERVICE_NAMES,
        listen_addr=deps.settings.listen_addr(deps.settings.embedding_addr),
        background=background,
    )


async def serve_workers(settings: Settings | None = None, own: EmbeddingSettings | None = None) -> None:
    """Job workers only, no gRPC server: a replica that adds embedding capacity."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    deps = await open_deps("embedding-worker", settings, "embedding", MIGRATIONS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        embedding_settings = own or EmbeddingSettings.from_env()
        embeddings = make_embeddings(deps, embedding_settings)
        await preload(embeddings)
        tasks = [
            asyncio.create_task(w.run(stop))
            for w in workers(embeddings, deps, embedding_settings, max(1, embedding_settings.workers, settings.workers))
        ]
        tasks.append(asyncio.create_task(embeddings.outbox.relay(stop)))  # the shards this process queues
        tasks.append(asyncio.create_task(EmbeddingWorker(embeddings, deps.delegated, embedding_settings).sweep(stop)))
        await stop.wait()
        log.info("embedding worker stopping")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await close_deps(deps)
