"""Builds the embedding service: servicers, health, reflection, and the job workers."""

from __future__ import annotations

import asyncio

from embedviz.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.app import Built, Deps, new_server
from services.common.events import run_work_queue
from services.embedding.datasets import IngestDatasets
from services.embedding.embeddings import KIND, Embeddings
from services.embedding.encoder import ModelRegistry
from services.embedding.servicer import EmbeddingInternalServicer, EmbeddingServicer
from services.embedding.worker import EmbeddingWorker

SERVICE_NAMES = [
    embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
    embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingInternalService"].full_name,
]


async def build(deps: Deps) -> Built:
    embeddings = Embeddings(
        db=deps.db,
        bus=deps.bus,
        blobs=deps.blobs,
        access=deps.access,
        models=ModelRegistry(deps.settings.model_path),
        datasets=IngestDatasets(deps.channels.get(deps.settings.ingest_addr)),
    )
    server, health = new_server(deps, SERVICE_NAMES)
    embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(embeddings), server)
    embedding_pb2_grpc.add_EmbeddingInternalServiceServicer_to_server(EmbeddingInternalServicer(embeddings), server)

    background = []
    if deps.settings.workers > 0:
        worker = EmbeddingWorker(embeddings, deps.delegated)

        async def work(stop: asyncio.Event) -> None:
            await run_work_queue(deps.bus, KIND, worker.handle, stop)

        background = [work] * deps.settings.workers
    return Built(
        server=server,
        health=health,
        service_names=SERVICE_NAMES,
        listen_addr=deps.settings.listen_addr(deps.settings.embedding_addr),
        background=background,
    )
