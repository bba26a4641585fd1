"""Reading a dataset's rows back from its Parquet file: pages (sorted, filtered), rows by
index, and bounded Arrow batches for other services. Plain synchronous pyarrow."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.common.errors import InvalidArgument, excerpt
from services.ingest import filters
from services.ingest.reading import ROW_COLUMN

SortOrder = Literal["ascending", "descending"]


@dataclass
class Page:
    columns: list[str]
    rows: list[tuple[int, list[Any]]]
    total_size: int


def data_columns(parquet: pq.ParquetFile) -> list[str]:
    return [n for n in parquet.schema_arrow.names if n != ROW_COLUMN]


def check_columns(parquet: pq.ParquetFile, wanted: list[str]) -> list[str]:
    available = data_columns(parquet)
    if not wanted:
        return available
    known = set(available)
    for name in wanted:
        if name not in known:
            raise InvalidArgument(f"column '{excerpt(name)}' not found; the dataset has: {', '.join(available)}")
    return list(wanted)


def parse_order_by(parquet: pq.ParquetFile, order_by: str) -> tuple[str, SortOrder] | None:
    text = order_by.strip()
    if not text:
        return None
    column, _, direction = text.rpartition(" ")
    if direction.lower() not in ("asc", "desc") or not column.strip():
        column, direction = text, "asc"
    column = column.strip()
    if column != ROW_COLUMN:
        check_columns(parquet, [column])
    return column, "descending" if direction.lower() == "desc" else "ascending"


def _text_columns(parquet: pq.ParquetFile) -> list[str]:
    return [
        f.name
        for f in parquet.schema_arrow
        if f.name != ROW_COLUMN and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    ]


def list_rows(
    parquet: pq.ParquetFile,
    columns: list[str],
    offset: int,
    limit: int,
    order_by: str = "",
    filter_text: str = "",
) -> Page:
    """One page of rows. With a filter or an order, the needed key columns are read one
    row group at a time, keeping only the matching rows' indexes (and sort keys)."""
    names = check_columns(parquet, columns)
    order = parse_order_by(parquet, order_by)
    parsed = filters.parse(filter_text, parquet.schema_arrow)
    total = parquet.metadata.num_rows
    if order is None and parsed is None:
        table = _read_range(parquet, names, offset, limit)
        return Page(names, _to_rows(table, names), total)
    text_columns = _text_columns(parquet)
    filter_columns = parsed.columns(text_columns) if parsed is not None else []
    needed = list(dict.fromkeys([ROW_COLUMN, *filter_columns, *([order[0]] if order else [])]))
    kept_columns = [ROW_COLUMN, *([order[0]] if order and order[0] != ROW_COLUMN else [])]
    pieces = []
    for g in range(parquet.metadata.num_row_groups):
        group = parquet.read_row_group(g, columns=needed)
        if parsed is not None:
            group = group.filter(parsed.mask(group, text_columns))
        pieces.append(group.select(kept_columns))
    keys = pa.concat_tables(pieces) if pieces else pa.table({ROW_COLUMN: pa.array([], pa.int64())})
    total = keys.num_rows
    if order is not None:
        sort_keys: list[tuple[str, SortOrder]] = [(order[0], order[1])]
        if order[0] != ROW_COLUMN:
            sort_keys.append((ROW_COLUMN, "ascending"))
        keys = keys.take(pc.sort_indices(keys, sort_keys=sort_keys, null_placement="at_end"))
    indexes = _row_numbers(keys.column(ROW_COLUMN).slice(offset, limit))
    return Page(names, get_rows(parquet, indexes, names), total)


def _read_range(parquet: pq.ParquetFile, names: list[str], start: int, count: int) -> pa.Table:
    """Rows [start, start+count) reading only the row groups that hold them."""
    groups, first = [], None
    position = 0
    for g in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(g).num_rows
        if position + n > start and position < start + count:
            groups.append(g)
            if first is None:
                first = position
        position += n
    if not groups:
        return pa.table({name: pa.array([], parquet.schema_arrow.field(name).type) for name in [ROW_COLUMN, *names]})
    table = parquet.read_row_groups(groups, columns=[ROW_COLUMN, *names])
    return table.slice(start - (first or 0), count)


def get_rows(parquet: pq.ParquetFile, indexes: list[int], names: list[str]) -> list[tuple[int, list[Any]]]:
    """Rows by `__row` index (= position in the file), in the order asked, repeats kept."""
    total = parquet.metadata.num_rows
    for index in indexes:
        if index < 0 or index >= total:
            raise InvalidArgument(f"row index {index} is out of range; the dataset has {total} rows (0 to {total - 1})")
    if not indexes:
        return []
    starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)])
    wanted = np.asarray(indexes, dtype=np.int64)
    group_of = np.searchsorted(starts, wanted, side="right") - 1
    groups = sorted(set(group_of.tolist()))
    table = parquet.read_row_groups(groups, columns=[ROW_COLUMN, *names])
    # position of each wanted row inside the concatenated row groups
    offsets = {}
    running = 0
    for g in groups:
        offsets[g] = running - int(starts[g])
        running += int(starts[g + 1] - starts[g])
    positions = pa.array([int(i) + offsets[int(g)] for i, g in zip(wanted, group_of, strict=True)], pa.int64())
    return _to_rows(table.take(positions), names)


def _row_numbers(column: pa.ChunkedArray[Any]) -> list[int]:
    # `__row` is the int64 column the importer writes for every row: it holds no nulls.
    return cast("list[int]", column.to_pylist())


def _to_rows(table: pa.Table, names: list[str]) -> list[tuple[int, list[Any]]]:
    index = _row_numbers(table.column(ROW_COLUMN))
    values = [table.column(name).to_pylist() for name in names]
    return [(index[r], [column[r] for column in values]) for r in range(table.num_rows)]


def stream_batches(
    parquet: pq.ParquetFile, columns: list[str], start_row: int, row_count: int, batch_rows: int
) -> Generator[tuple[int, pa.RecordBatch], None, None]:
    """Batches of at most `batch_rows` rows (with `__row`) from start_row, reading one
    row group at a time so memory stays bounded."""
    names = [ROW_COLUMN, *check_columns(parquet, columns)]
    total = parquet.metadata.num_rows
    if start_row < 0 or start_row > total:
        raise InvalidArgument(f"start_row {start_row} is out of range; the dataset has {total} rows")
    end = total if row_count == 0 else min(total, start_row + row_count)
    position = 0
    for g in range(parquet.metadata.num_row_groups):
        n = parquet.metadata.row_group(g).num_rows
        group_start, position = position, position + n
        if position <= start_row or group_start >= end:
            continue
        table = parquet.read_row_group(g, columns=names)
        lo, hi = max(start_row, group_start) - group_start, min(end, position) - group_start
        for at in range(lo, hi, batch_rows):
            piece = table.slice(at, min(batch_rows, hi - at))
            for batch in piece.combine_chunks().to_batches():
                yield group_start + at, batch


# ReadColumns: a string column becomes dictionary<int32, string> when it has at most this
# many distinct values and at most one per two rows (a category, not free text).
MAX_DICTIONARY_VALUES = 10_000
# A ReadColumns message holds about this many bytes of column data at most.
COLUMN_MESSAGE_BYTES = 2 * 1024 * 1024


def _is_string(field_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(field_type) or pa.types.is_large_string(field_type))


def category_dictionaries(parquet: pq.ParquetFile, names: list[str]) -> dict[str, pa.Array[Any]]:
    """For each string column of `names` that is a category (see MAX_DICTIONARY_VALUES):
    its distinct values, most frequent first (ties by value). One pass over the column, one
    row group at a time; a column stops being counted once it has too many values."""
    total = parquet.metadata.num_rows
    limit = min(MAX_DICTIONARY_VALUES, max(1, total // 2))
    counting = [n for n in names if _is_string(parquet.schema_arrow.field(n).type)]
    counts: dict[str, dict[str, int]] = {n: {} for n in counting}
    compute: Any = pc  # pyarrow-stubs do not type value_counts' struct result
    for g in range(parquet.metadata.num_row_groups):
        if not counting:
            break
        group = parquet.read_row_group(g, columns=counting)
        for name in list(counting):
            tally = counts[name]
            for item in compute.value_counts(group.column(name)).to_pylist():
                value = item["values"]
                if value is not None:
                    tally[value] = tally.get(value, 0) + int(item["counts"])
            if len(tally) > limit:
                counting.remove(name)
                del counts[name]
    return {
        name: pa.array(sorted(tally, key=lambda v: (-tally[v], v)), pa.string())
        for name, tally in counts.items()
    }


def _encoded(column: pa.ChunkedArray[Any], dictionary: pa.Array[Any] | None) -> pa.Array[Any]:
    values = column.combine_chunks()
    if dictionary is None:
        return values
    compute: Any = pc  # index_in's stubs want a SetLookupOptions we build from the values
    indices = compute.index_in(values.cast(pa.string()), value_set=dictionary).cast(pa.int32())
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def read_columns(
    parquet: pq.ParquetFile, columns: list[str], batch_rows: int
) -> Generator[tuple[int, pa.RecordBatch], None, None]:
    """Every row of `columns` (in the order asked, without `__row`), in row order, in
    batches of at most `batch_rows` rows and about COLUMN_MESSAGE_BYTES; category strings
    dictionary-encoded with the same dictionary in every batch (`category_dictionaries`)."""
    names = check_columns(parquet, columns)
    dictionaries = category_dictionaries(parquet, names)
    position = 0
    for g in range(parquet.metadata.num_row_groups):
        group = parquet.read_row_group(g, columns=names)
        arrays = [_encoded(group.column(n), dictionaries.get(n)) for n in names]
        table = pa.Table.from_arrays(arrays, names=names)
        rows = table.num_rows
        per_row = max(1, table.nbytes // max(1, rows))
        step = max(1, min(batch_rows, COLUMN_MESSAGE_BYTES // per_row))
        for at in range(0, rows, step):
            piece = table.slice(at, step).combine_chunks()
            for batch in piece.to_batches():
                yield position + at, batch
        position += rows
