"""gRPC face of the embedding service: check the request, call the domain, build messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
from google.protobuf import empty_pb2

from embedviz.v1 import embedding_pb2, embedding_pb2_grpc
from services.common.auth import current_identity
from services.common.errors import InvalidArgument
from services.common.jobs import watch
from services.common.rpc_types import Context
from services.embedding.embeddings import (
    KIND,
    Embeddings,
    EmbeddingSpec,
    embedding_message,
)
from services.embedding.vectors import VectorFile, vectors_key

MAX_TEXTS = 64
MAX_TEXT_CHARS = 100_000
DEFAULT_CHUNK_ROWS = 4096
# Keep each StreamVectors message well under the 64 MiB message limit.
MAX_CHUNK_BYTES = 32 * 1024 * 1024


def _to_le_bytes(vectors: np.ndarray) -> bytes:
    return np.ascontiguousarray(vectors, dtype="<f4").tobytes()


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, embeddings: Embeddings) -> None:
        self.embeddings = embeddings

    async def ListModels(
        self, request: embedding_pb2.ListModelsRequest, context: Context
    ) -> embedding_pb2.ListModelsResponse:
        current_identity()
        registry = self.embeddings.models
        models = []
        for spec in registry.specs():
            loaded = registry.loaded(spec.name)
            models.append(
                embedding_pb2.Model(
                    name=spec.name,
                    display_name=spec.display_name,
                    dimension=loaded.dimension if loaded else spec.dimension,
                    max_tokens=loaded.max_tokens if loaded else spec.max_tokens,
                    provider=spec.provider,
                    loaded=loaded is not None,
                    default=spec.default,
                    speed_hint=spec.speed_hint,
                    precision=loaded.precision if loaded else "",
                    device=loaded.device if loaded else "",
                    rows_per_second=loaded.rows_per_second if loaded else 0.0,
                    error=spec.error,
                )
            )
        return embedding_pb2.ListModelsResponse(models=models)

    async def CreateEmbedding(
        self, request: embedding_pb2.CreateEmbeddingRequest, context: Context
    ) -> embedding_pb2.Embedding:
        spec = request.embedding
        row = await self.embeddings.create(
            current_identity(),
            request.parent,
            EmbeddingSpec(
                model=spec.model,
                text_columns=list(spec.text_columns),
                template=spec.template,
                project_when_done=spec.project_when_done,
                float16=spec.float16,
                vector_columns=tuple(spec.vector_columns),
            ),
        )
        return embedding_message(row)

    async def GetEmbedding(
        self, request: embedding_pb2.GetEmbeddingRequest, context: Context
    ) -> embedding_pb2.Embedding:
        return embedding_message(await self.embeddings.get(current_identity(), request.name))

    async def ListEmbeddings(
        self, request: embedding_pb2.ListEmbeddingsRequest, context: Context
    ) -> embedding_pb2.ListEmbeddingsResponse:
        rows, next_token = await self.embeddings.list(
            current_identity(), request.parent, request.page_size, request.page_token
        )
        return embedding_pb2.ListEmbeddingsResponse(
            embeddings=[embedding_message(row) for row in rows], next_page_token=next_token
        )

    async def DeleteEmbedding(
        self, request: embedding_pb2.DeleteEmbeddingRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.embeddings.delete(current_identity(), request.name)
        return empty_pb2.Empty()

    async def WatchEmbedding(
        self, request: embedding_pb2.WatchEmbeddingRequest, context: Context
    ) -> AsyncIterator[embedding_pb2.WatchEmbeddingResponse]:
        row = await self.embeddings.get(current_identity(), request.name)

        async def load() -> embedding_pb2.Embedding:
            return embedding_message(await self.embeddings.load(request.name))

        stream = watch(
            self.embeddings.bus,
            KIND,
            row.id,
            load,
            embedding_pb2.Embedding.FromString,
            lambda message: message.job,
        )
        try:
            async for message in stream:
                yield embedding_pb2.WatchEmbeddingResponse(embedding=message)
        finally:
            await stream.aclose()

    async def CancelEmbedding(
        self, request: embedding_pb2.CancelEmbeddingRequest, context: Context
    ) -> embedding_pb2.Embedding:
        return embedding_message(await self.embeddings.cancel(current_identity(), request.name))

    async def ExtendEmbedding(
        self, request: embedding_pb2.ExtendEmbeddingRequest, context: Context
    ) -> embedding_pb2.Embedding:
        return embedding_message(await self.embeddings.extend(current_identity(), request.name))

    async def EmbedTexts(
        self, request: embedding_pb2.EmbedTextsRequest, context: Context
    ) -> embedding_pb2.EmbedTextsResponse:
        current_identity()
        texts = list(request.texts)
        if not texts:
            raise InvalidArgument("texts is empty; send at least one text to embed")
        if len(texts) > MAX_TEXTS:
            raise InvalidArgument(f"{len(texts)} texts sent; at most {MAX_TEXTS} can be embedded in one call")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{i}] is empty; every text needs some words")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidArgument(f"texts[{i}] has {len(text)} characters; at most {MAX_TEXT_CHARS} are accepted")
        model = await self.embeddings.models.load(request.model)
        vectors = await asyncio.to_thread(model.encode, texts)
        return embedding_pb2.EmbedTextsResponse(dimension=model.dimension, vectors=_to_le_bytes(vectors))


class EmbeddingInternalServicer(embedding_pb2_grpc.EmbeddingInternalServiceServicer):
    def __init__(self, embeddings: Embeddings) -> None:
        self.embeddings = embeddings

    async def StreamVectors(
        self, request: embedding_pb2.StreamVectorsRequest, context: Context
    ) -> AsyncIterator[embedding_pb2.StreamVectorsResponse]:
        if request.chunk_rows < 0:
            raise InvalidArgument("chunk_rows must not be negative")
        row = await self.embeddings.readable_vectors(current_identity(), request.embedding)
        blobs = self.embeddings.blobs
        vectors = await asyncio.to_thread(VectorFile.open, blobs, vectors_key(row.id))
        try:
            most_rows = max(1, MAX_CHUNK_BYTES // (4 * max(vectors.dimension, 1)))
            chunk_rows = min(request.chunk_rows or DEFAULT_CHUNK_ROWS, most_rows)
            for chunk in vectors.chunks(chunk_rows):
                yield embedding_pb2.StreamVectorsResponse(
                    start_row=chunk.start_row,
                    row_count=chunk.row_count,
                    dimension=chunk.dimension,
                    vectors=chunk.data,
                )
        finally:
            vectors.close()
