"""A projection's rows as a file (CSV, JSON Lines, Parquet), written batch by batch so an
export of a million rows streams in bounded memory. Plain pyarrow; no gRPC here."""

from __future__ import annotations

import csv
import io
import json
from typing import IO, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.projection.maps import Points

CSV = "CSV"
JSONL = "JSONL"
PARQUET = "PARQUET"
CONTENT_TYPES = {CSV: "text/csv", JSONL: "application/jsonl", PARQUET: "application/vnd.apache.parquet"}
RESERVED = ("row", "x", "y", "z", "cluster", "label")
RANGE_ROWS = 65_536  # rows a batch without dataset columns


def row_ranges(total: int, chosen: np.ndarray | None) -> list[tuple[int, int]]:
    """[start, stop) ranges of rows to read: everything, or the span of the selection cut
    into runs that skip long gaps between selected rows."""
    if chosen is None:
        return [(start, min(start + RANGE_ROWS, total)) for start in range(0, total, RANGE_ROWS)]
    if chosen.shape[0] == 0:
        return []
    ranges: list[tuple[int, int]] = []
    start = prev = int(chosen[0])
    for index in chosen[1:].tolist():
        if index - prev > 8192 or index - start >= RANGE_ROWS:
            ranges.append((start, prev + 1))
            start = index
        prev = index
    ranges.append((start, prev + 1))
    return ranges


class _Sink:
    """A write-only file that hands out what was written since the last `take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _csv_values(column: pa.ChunkedArray[Any]) -> list[object]:
    """A column's values as CSV cells: floats in their shortest float32 form, null empty."""
    if pa.types.is_float32(column.type):
        return ["" if v is None else f"{v:.7g}" for v in column.to_pylist()]
    return ["" if v is None else v for v in column.to_pylist()]


class ExportWriter:
    def __init__(self, file_format: str, points: Points, labels: dict[int, str], columns: list[str]) -> None:
        self.format = file_format
        self.content_type = CONTENT_TYPES[file_format]
        self._points = points
        self._labels = labels
        self._columns = columns
        self._header = True
        self._sink = _Sink()
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        # points are stored in row order; map row index -> position for any other order
        rows = points.rows.astype(np.int64)
        self._position = None if np.array_equal(rows, np.arange(rows.shape[0])) else np.argsort(rows)

    def _positions(self, indexes: np.ndarray) -> np.ndarray:
        return indexes if self._position is None else self._position[indexes]

    def _table(self, indexes: np.ndarray, extra: pa.Table | None) -> pa.Table:
        at = self._positions(indexes)
        clusters = self._points.clusters[at]
        columns: dict[str, pa.Array[Any]] = {"row": pa.array(indexes.astype(np.int64), type=pa.int64())}
        for axis, name in enumerate("xyz"[: self._points.dimensions]):
            columns[name] = pa.array(self._points.coordinates[at, axis], type=pa.float32())
        columns["cluster"] = pa.array(clusters.astype(np.int32), type=pa.int32())
        columns["label"] = pa.array([self._labels.get(int(c), "") for c in clusters.tolist()], type=pa.string())
        table = pa.table(columns)
        if extra is not None:
            for name in self._columns:
                table = table.append_column(name, extra.column(name))
        return table

    def write(self, first: int, extra: pa.Table | None, chosen: np.ndarray | None, count: int = 0) -> bytes:
        """The bytes for rows [first, first + rows in the batch), keeping only `chosen`."""
        n = extra.num_rows if extra is not None else count
        indexes = np.arange(first, first + n, dtype=np.int64)
        if chosen is not None:
            lo, hi = np.searchsorted(chosen, [first, first + n])
            indexes = chosen[lo:hi]
        if extra is not None and chosen is not None:
            extra = extra.take(pa.array(indexes - first, type=pa.int64()))
        return self._encode(self._table(indexes, extra))

    def _encode(self, table: pa.Table) -> bytes:
        if self.format == CSV:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            if self._header:
                writer.writerow(table.column_names)
                self._header = False
            columns = [_csv_values(table.column(i)) for i in range(table.num_columns)]
            writer.writerows(zip(*columns, strict=True))
            return buffer.getvalue().encode()
        if self.format == JSONL:
            return "".join(
                json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in table.to_pylist()
            ).encode()
        if self._parquet is None:
            self._schema = table.schema
            # pyarrow writes to any object with write() (in a PythonFile); its stubs name only IO.
            self._parquet = pq.ParquetWriter(cast("IO[bytes]", self._sink), table.schema, compression="zstd")
        if table.num_rows:
            assert self._schema is not None  # set with the writer
            self._parquet.write_table(table.cast(self._schema))
        return self._sink.take()

    def close(self) -> bytes:
        """What is left: the header of an empty CSV, the footer of a Parquet file."""
        if self.format == CSV and self._header:
            return self._encode(self._table(np.zeros(0, dtype=np.int64), None))
        if self.format == PARQUET:
            if self._parquet is None:
                self._encode(self._table(np.zeros(0, dtype=np.int64), None))
            assert self._parquet is not None
            self._parquet.close()
            return self._sink.take()
        return b""
