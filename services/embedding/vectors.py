"""The vector file: an Arrow IPC file with one column `vector`
(fixed_size_list<float32>[dim], or float16 when asked for); row i is the dataset's row i.
While a job runs, its vectors are Arrow part files, one per checkpoint, that are joined in
row order into the vector file at the end."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

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


def parts_prefix(embedding_id: str, generation: int) -> str:
    return f"embeddings/{embedding_id}/parts/g{generation}"


def part_key(embedding_id: str, generation: int, start: int, end: int) -> str:
    """The part file of rows [start, end): named by its rows, so a part written twice (by a
    worker that lost its lease and the one that took over) is the same file."""
    return f"{parts_prefix(embedding_id, generation)}/{start:012d}-{end:012d}.arrow"


def vector_schema(dimension: int, float16: bool = False) -> pa.Schema:
    value = pa.float16() if float16 else pa.float32()
    return pa.schema([pa.field(VECTOR_COLUMN, pa.list_(value, dimension), nullable=False)])


def vector_array(vectors: np.ndarray, float16: bool = False) -> pa.FixedSizeListArray[Any, Any]:
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (rows x dimension), got shape {vectors.shape}")
    flat = np.ascontiguousarray(vectors, dtype="<f2" if float16 else "<f4").reshape(-1)
    values = pa.array(flat, type=pa.float16() if float16 else pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])


class VectorFileWriter:
    """Writes vectors batch by batch; memory holds one batch at a time."""

    def __init__(self, sink: pa.NativeFile, dimension: int, float16: bool = False) -> None:
        self.dimension = dimension
        self.rows = 0
        self.float16 = float16
        self._sink = sink
        self._schema = vector_schema(dimension, float16)
        self._writer = pa.ipc.new_file(sink, self._schema)

    def write(self, vectors: np.ndarray) -> None:
        if vectors.shape[0] == 0:
            return
        if vectors.shape[1] != self.dimension:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, the file {self.dimension}")
        batch = pa.record_batch([vector_array(vectors, self.float16)], schema=self._schema)
        self._writer.write_batch(batch)
        self.rows += vectors.shape[0]

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append a record batch of another vector file with the same schema, as is."""
        if batch.num_rows:
            self._writer.write_batch(batch)
            self.rows += batch.num_rows

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
    """A vector file opened for reading, memory-mapped (from a temporary copy on S3)."""

    def __init__(self, source: pa.NativeFile) -> None:
        self._source = source
        reader = pa.ipc.open_file(source)
        self._table = reader.read_all()
        field = self._table.schema.field(VECTOR_COLUMN)
        if not pa.types.is_fixed_size_list(field.type):
            raise ValueError(f"column {VECTOR_COLUMN} is {field.type}, not a fixed-size list")
        self.dimension: int = field.type.list_size
        self.float16: bool = pa.types.is_float16(field.type.value_type)
        self.schema: pa.Schema = self._table.schema
        self.rows: int = self._table.num_rows

    @classmethod
    def open(cls, blobs: BlobStore, key: str) -> VectorFile:
        return cls(blobs.open_mapped(key))

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
        # The vector column is a fixed-size list column (vector_schema).
        flat = cast("pa.FixedSizeListArray[Any, Any]", column.combine_chunks()).flatten()
        values = flat.to_numpy(zero_copy_only=not self.float16)
        rows: np.ndarray = values.astype(np.float32, copy=False).reshape(-1, self.dimension)
        return rows

    def batches(self) -> Iterator[pa.RecordBatch]:
        yield from self._table.to_batches()

    def chunks(self, chunk_rows: int) -> Iterator[VectorChunk]:
        for start in range(0, self.rows, chunk_rows):
            count = min(chunk_rows, self.rows - start)
            values = self.rows_as_numpy(start, count)
            data = values.astype("<f4", copy=False).tobytes()
            yield VectorChunk(start, count, self.dimension, data)


def write_part(blobs: BlobStore, key: str, vectors: np.ndarray, float16: bool, tag: str) -> None:
    """A complete part file, written beside its place and then moved there, so a part
    that exists is whole."""
    temporary = f"{key}.{tag}.tmp"
    writer = VectorFileWriter(blobs.open_output(temporary), vectors.shape[1], float16)
    try:
        writer.write(vectors)
    except BaseException:
        writer.abort()
        blobs.delete(temporary)
        raise
    writer.close()
    blobs.move(temporary, key)


def assemble(
    blobs: BlobStore, target: str, sources: Sequence[str], dimension: int, float16: bool, tag: str
) -> tuple[str, int]:
    """Join vector files (the earlier vectors of an extension, then the parts) in order into
    a file beside `target`, batch by batch, memory-mapped; returns its key and rows. The
    caller moves it onto `target`."""
    temporary = f"{target}.{tag}.part"
    writer = VectorFileWriter(blobs.open_output(temporary), dimension, float16)
    try:
        for key in sources:
            with VectorFile.open(blobs, key) as source:
                if source.dimension != dimension:
                    raise ValueError(f"{key} has dimension {source.dimension}, not {dimension}")
                if source.float16 != float16:
                    for start in range(0, source.rows, 8192):
                        writer.write(source.rows_as_numpy(start, min(8192, source.rows - start)))
                else:
                    for batch in source.batches():
                        writer.write_batch(batch)
    except BaseException:
        writer.abort()
        blobs.delete(temporary)
        raise
    writer.close()
    return temporary, writer.rows
