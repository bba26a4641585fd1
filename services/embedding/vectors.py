"""The vector file: an Arrow IPC file with one column `vector`
(fixed_size_list<float32>[dim]); row i is the dataset's row i."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from services.common.blobs import BlobStore

VECTOR_COLUMN = "vector"


def vectors_key(embedding_id: str) -> str:
    return f"embeddings/{embedding_id}/vectors.arrow"


def partial_key(embedding_id: str) -> str:
    """Where a job writes until it succeeds, so no reader sees half a file."""
    return f"embeddings/{embedding_id}/vectors.arrow.part"


def embedding_prefix(embedding_id: str) -> str:
    return f"embeddings/{embedding_id}"


def vector_schema(dimension: int) -> pa.Schema:
    return pa.schema([pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dimension), nullable=False)])


def vector_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (rows x dimension), got shape {vectors.shape}")
    flat = np.ascontiguousarray(vectors, dtype="<f4").reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), vectors.shape[1])


class VectorFileWriter:
    """Writes vectors batch by batch; memory holds one batch at a time."""

    def __init__(self, sink: pa.NativeFile, dimension: int) -> None:
        self.dimension = dimension
        self.rows = 0
        self._sink = sink
        self._schema = vector_schema(dimension)
        self._writer = pa.ipc.new_file(sink, self._schema)

    def write(self, vectors: np.ndarray) -> None:
        if vectors.shape[0] == 0:
            return
        if vectors.shape[1] != self.dimension:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, the file {self.dimension}")
        batch = pa.record_batch([vector_array(vectors)], schema=self._schema)
        self._writer.write_batch(batch)
        self.rows += vectors.shape[0]

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._sink.close()


@dataclass(frozen=True)
class VectorChunk:
    start_row: int
    row_count: int
    dimension: int
    data: bytes  # row-major little-endian float32


class VectorFile:
    """A vector file opened for reading: memory-mapped when the store is local."""

    def __init__(self, source: pa.NativeFile) -> None:
        self._source = source
        reader = pa.ipc.open_file(source)
        self._table = reader.read_all()
        field = self._table.schema.field(VECTOR_COLUMN)
        if not pa.types.is_fixed_size_list(field.type):
            raise ValueError(f"column {VECTOR_COLUMN} is {field.type}, not a fixed-size list")
        self.dimension: int = field.type.list_size
        self.rows: int = self._table.num_rows

    @classmethod
    def open(cls, blobs: BlobStore, key: str) -> VectorFile:
        path = blobs.local_path(key)
        source = pa.memory_map(path, "r") if path is not None else blobs.open_input_file(key)
        return cls(source)

    def close(self) -> None:
        self._table = pa.table({})
        self._source.close()

    def __enter__(self) -> VectorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows_as_numpy(self, start: int = 0, count: int | None = None) -> np.ndarray:
        count = self.rows - start if count is None else count
        column = self._table.column(VECTOR_COLUMN).slice(start, count)
        if column.num_chunks == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        flat = column.combine_chunks().flatten()
        values = flat.to_numpy(zero_copy_only=True)
        return values.reshape(-1, self.dimension)

    def chunks(self, chunk_rows: int) -> Iterator[VectorChunk]:
        for start in range(0, self.rows, chunk_rows):
            count = min(chunk_rows, self.rows - start)
            values = self.rows_as_numpy(start, count)
            data = values.astype("<f4", copy=False).tobytes()
            yield VectorChunk(start, count, self.dimension, data)
