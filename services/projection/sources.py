"""What the projection service reads from other services, over their gRPC APIs, always
as the caller (or, in a worker, as the job's owner): embeddings and their vectors from
the embedding service, row texts from ingest. gRPC failures become domain errors."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedviz.v1 import (
    embedding_pb2,
    embedding_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    job_pb2,
)
from services.common import errors
from services.common.auth import Identity
from services.common.clients import Channels

_ERRORS: dict[grpc.StatusCode, type[errors.DomainError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.OUT_OF_RANGE: errors.OutOfRange,
    grpc.StatusCode.ABORTED: errors.Aborted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
}


def _domain_error(exc: grpc.aio.AioRpcError, what: str) -> Exception:
    kind = _ERRORS.get(exc.code())
    if kind is None:
        return RuntimeError(f"{what} failed: {exc.code().name}: {exc.details()}")
    return kind(exc.details() or f"{what} failed ({exc.code().name})")


@dataclass(frozen=True)
class EmbeddingInfo:
    name: str
    model: str  # "" for vectors the dataset brought (no model turns a text into one)
    text_columns: list[str]
    dimension: int
    row_count: int
    succeeded: bool
    state_name: str


class Sources:
    def __init__(self, channels: Channels, embedding_addr: str, ingest_addr: str) -> None:
        self._channels = channels
        self._embedding_addr = embedding_addr
        self._ingest_addr = ingest_addr

    def _embeddings(self) -> embedding_pb2_grpc.EmbeddingServiceAsyncStub:
        return embedding_pb2_grpc.EmbeddingServiceStub(self._channels.get(self._embedding_addr))

    def _embeddings_internal(self) -> embedding_pb2_grpc.EmbeddingInternalServiceAsyncStub:
        return embedding_pb2_grpc.EmbeddingInternalServiceStub(self._channels.get(self._embedding_addr))

    def _ingest(self) -> ingest_pb2_grpc.IngestServiceAsyncStub:
        return ingest_pb2_grpc.IngestServiceStub(self._channels.get(self._ingest_addr))

    def _ingest_internal(self) -> ingest_pb2_grpc.IngestInternalServiceAsyncStub:
        return ingest_pb2_grpc.IngestInternalServiceStub(self._channels.get(self._ingest_addr))

    async def get_embedding(self, identity: Identity, name: str) -> EmbeddingInfo:
        try:
            e = await self._embeddings().GetEmbedding(
                embedding_pb2.GetEmbeddingRequest(name=name), metadata=identity.metadata(), timeout=15
            )
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, f"reading {name}") from None
        state = e.job.state
        return EmbeddingInfo(
            name=e.name or name,
            # no model to embed with when the dataset brought its own vectors
            model="" if e.vector_columns else e.model,
            text_columns=list(e.text_columns),
            dimension=e.dimension,
            row_count=e.row_count,
            succeeded=state == job_pb2.JOB_STATE_SUCCEEDED,
            state_name=job_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower(),
        )

    async def load_vectors(
        self,
        identity: Identity,
        embedding: EmbeddingInfo,
        limit: int = 0,
        on_chunk: Callable[[int], object] | None = None,
        allocate: Callable[[int, int], np.ndarray] | None = None,
    ) -> np.ndarray:
        """All vectors of an embedding (or its first `limit` rows) in one float32 array,
        allocated once from the first chunk's dimension and the embedding's row count
        (by `allocate(rows, dimension)` when given, e.g. a memory-mapped file)."""
        rows = embedding.row_count if not limit else min(limit, embedding.row_count or limit)
        out: np.ndarray | None = None
        filled = 0
        stream = self._embeddings_internal().StreamVectors(
            embedding_pb2.StreamVectorsRequest(embedding=embedding.name, chunk_rows=4096),
            metadata=identity.metadata(),
        )
        try:
            async for chunk in stream:
                dim = chunk.dimension
                if out is None:
                    out = allocate(rows, dim) if allocate is not None else np.zeros((rows, dim), dtype=np.float32)
                start = int(chunk.start_row)
                if start >= rows:
                    continue
                block = np.frombuffer(chunk.vectors, dtype="<f4").reshape(int(chunk.row_count), dim)
                stop = min(start + block.shape[0], rows)
                out[start:stop] = block[: stop - start]
                filled += stop - start
                if on_chunk is not None:
                    result = on_chunk(filled)
                    if hasattr(result, "__await__"):
                        await result
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, f"reading the vectors of {embedding.name}") from None
        finally:
            stream.cancel()
        if out is None:
            width = int(embedding.dimension)
            out = allocate(rows, width) if allocate is not None else np.zeros((rows, width), dtype=np.float32)
        if filled < rows:
            raise errors.FailedPrecondition(
                f"{embedding.name} sent {filled} vectors but has {rows} rows; the embedding may be incomplete"
            )
        return out

    async def dataset_columns(self, identity: Identity, dataset: str) -> list[str]:
        try:
            d = await self._ingest().GetDataset(
                ingest_pb2.GetDatasetRequest(name=dataset), metadata=identity.metadata(), timeout=15
            )
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, f"reading {dataset}") from None
        return [c.name for c in d.columns]

    async def stream_rows(
        self, identity: Identity, dataset: str, columns: list[str], start_row: int, row_count: int
    ) -> AsyncGenerator[tuple[int, pa.Table], None]:
        """(first row index, Arrow table) of each batch of rows in [start_row, start_row + row_count)."""
        stream = self._ingest_internal().StreamRows(
            ingest_pb2.StreamRowsRequest(
                dataset=dataset, columns=columns, start_row=start_row, row_count=row_count, batch_rows=8192
            ),
            metadata=identity.metadata(),
        )
        try:
            async for batch in stream:
                yield int(batch.start_row), pa.ipc.open_stream(batch.arrow_ipc).read_all()
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, f"reading the rows of {dataset}") from None
        finally:
            stream.cancel()

    async def load_texts(self, identity: Identity, dataset: str, columns: list[str], rows: int) -> list[str]:
        """The text of each of the first `rows` rows: its text columns joined by spaces."""
        texts = [""] * rows
        # pyarrow-stubs type fill_null and binary_join_element_wise on chunked columns as `object`.
        compute: Any = pc
        stream = self._ingest_internal().StreamRows(
            ingest_pb2.StreamRowsRequest(dataset=dataset, columns=columns, start_row=0, row_count=rows),
            metadata=identity.metadata(),
        )
        try:
            async for batch in stream:
                table = pa.ipc.open_stream(batch.arrow_ipc).read_all()
                parts: list[pa.ChunkedArray[Any]] = [
                    compute.fill_null(pc.cast(table.column(c), pa.string()), "")
                    for c in columns
                    if c in table.column_names
                ]
                if not parts:
                    continue
                joined: pa.ChunkedArray[Any] = (
                    parts[0] if len(parts) == 1 else compute.binary_join_element_wise(*parts, " ")
                )
                start = int(batch.start_row)
                values = cast("list[str]", joined.to_pylist())  # no nulls: filled with ""
                stop = min(start + len(values), rows)
                if stop > start:
                    texts[start:stop] = values[: stop - start]
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, f"reading the texts of {dataset}") from None
        finally:
            stream.cancel()
        return texts

    async def embed_texts(self, identity: Identity, model: str, texts: list[str], batch: int = 64) -> np.ndarray:
        """Vectors of `texts` (rows in order) from the embedding service's `model`, in
        calls of at most `batch` texts (EmbedTexts' limit)."""
        parts: list[np.ndarray] = []
        for start in range(0, len(texts), batch):
            try:
                response = await self._embeddings().EmbedTexts(
                    embedding_pb2.EmbedTextsRequest(model=model, texts=texts[start : start + batch]),
                    metadata=identity.metadata(),
                    timeout=120,
                )
            except grpc.aio.AioRpcError as exc:
                raise _domain_error(exc, "embedding the label candidates") from None
            parts.append(np.frombuffer(response.vectors, dtype="<f4").reshape(-1, response.dimension).copy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    async def embed_query(self, identity: Identity, model: str, text: str) -> np.ndarray:
        try:
            response = await self._embeddings().EmbedTexts(
                embedding_pb2.EmbedTextsRequest(model=model, texts=[text]),
                metadata=identity.metadata(),
                timeout=60,
            )
        except grpc.aio.AioRpcError as exc:
            raise _domain_error(exc, "embedding the query") from None
        return np.frombuffer(response.vectors, dtype="<f4")[: response.dimension].copy()
