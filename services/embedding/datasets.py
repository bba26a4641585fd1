"""The datasets an embedding reads, asked of the ingest service (the owner of datasets)
with the caller's identity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import pyarrow as pa

from embedviz.v1 import ingest_pb2, ingest_pb2_grpc, job_pb2
from services.common.auth import Identity
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from services.embedding.embeddings import DatasetInfo

_STATE_NAMES = {
    job_pb2.JOB_STATE_PENDING: "PENDING",
    job_pb2.JOB_STATE_RUNNING: "RUNNING",
    job_pb2.JOB_STATE_SUCCEEDED: "SUCCEEDED",
    job_pb2.JOB_STATE_FAILED: "FAILED",
    job_pb2.JOB_STATE_CANCELLED: "CANCELLED",
}


def _translate(exc: grpc.aio.AioRpcError, dataset: str) -> Exception:
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{dataset} not found")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(exc.details() or f"no access to {dataset}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(exc.details() or "invalid request for the dataset")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(exc.details() or f"{dataset} cannot be read now")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable("the ingest service is not reachable; try again shortly")
    return exc


class IngestDatasets:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._datasets = ingest_pb2_grpc.IngestServiceStub(channel)
        self._rows = ingest_pb2_grpc.IngestInternalServiceStub(channel)

    async def get(self, identity: Identity, dataset: str) -> DatasetInfo:
        try:
            message = await self._datasets.GetDataset(
                ingest_pb2.GetDatasetRequest(name=dataset), metadata=identity.metadata(), timeout=30
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, dataset) from None
        return DatasetInfo(
            name=message.name,
            state=_STATE_NAMES.get(message.job.state, "UNSPECIFIED"),
            columns=[column.name for column in message.columns],
            row_count=message.row_count,
            error=message.job.error,
        )

    async def stream_rows(
        self, identity: Identity, dataset: str, columns: Sequence[str], batch_rows: int = 1024,
        start_row: int = 0, row_count: int = 0,
    ) -> AsyncIterator[tuple[int, pa.Table]]:
        """(first row index, rows) per batch, in row order, of rows [start_row,
        start_row + row_count) (to the end when row_count is 0)."""
        call = self._rows.StreamRows(
            ingest_pb2.StreamRowsRequest(
                dataset=dataset, columns=list(columns), batch_rows=batch_rows, start_row=start_row, row_count=row_count
            ),
            metadata=identity.metadata(),
        )
        try:
            async for message in call:
                with pa.ipc.open_stream(pa.py_buffer(message.arrow_ipc)) as reader:
                    table = reader.read_all()
                yield message.start_row, table
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, dataset) from None
        finally:
            call.cancel()
