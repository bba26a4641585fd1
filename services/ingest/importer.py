"""Reading an uploaded file (CSV/TSV, Parquet, JSON Lines, Arrow IPC; the text formats
also gzip- or zstd-compressed) into the dataset's Parquet file, in bounded batches, with a
stable `__row` index and column statistics. Every way a file can be wrong ends in
ImportFailed with a message for a person, naming the line and column where it can.

Writing lives here; sniffing.py settles how to read the file, reading.py opens it,
diagnosis.py says what is wrong with it. Plain synchronous Python over pyarrow; the
service runs it in a worker thread."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from services.ingest.diagnosis import (
    Damaged,
    NeedBigBlocks,
    ReadAsText,
    diagnose,
    find_unclosed_quote,
    not_utf8,
)
from services.ingest.reading import (
    CSV,
    NONE,
    ROW_COLUMN,
    SMALL_BLOCK,
    ImportFailed,
    Limits,
    Opener,
    Options,
    Source,
    big_block,
    open_batches,
)
from services.ingest.sniffing import settle_options

ROW_GROUP_ROWS = 64 * 1024
ROW_GROUP_BYTES = 32 * 1024 * 1024
SAMPLE_VALUES = 10_000


def parsed_bytes(blocks: int, block: int, source: Source, size_bytes: int) -> int:
    """How much of the uploaded file the parsed rows stand for, in the file's own bytes.

    pyarrow's CSV and JSON readers read far ahead of the rows they hand out (a whole
    30 MB file before the first batch), so the bytes read say nothing about progress.
    Each batch is one block of text, though: the blocks parsed times the block size is
    the text behind the rows, scaled back to compressed bytes by the ratio seen so far."""
    text = blocks * block
    if source.raw.bytes_read and source.text.bytes_read > source.raw.bytes_read:  # compressed
        text = int(text * source.raw.bytes_read / source.text.bytes_read)
    return max(1, min(text, size_bytes))


@dataclass
class ColumnStats:
    name: str
    type: str
    null_count: int = 0
    mean_length: float = 0.0
    distinct_ratio: float = 0.0
    suggested: bool = False
    source_name: str = ""  # the name in the file, when it had to change to be unique

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportResult:
    format: str
    delimiter: str
    row_count: int
    columns: list[ColumnStats] = field(default_factory=list)
    encoding: str = ""
    quote_char: str = ""
    compression: str = NONE
    appended_rows: int = 0
    parts: Checkpoint | None = None  # the part files written (with Parts), None: one file (open_sink)


# rows written, estimated rows in all (0: unknown), bytes of the source file read so far
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Checkpoint:
    """What an import has written for good: `parts` part files with its first `rows` rows,
    read with these choices (columns read as text, block size), which name its parts."""

    parts: int = 0
    rows: int = 0
    as_text: tuple[str, ...] = ()
    block_bytes: int = 0

    @property
    def tag(self) -> str:
        """Names the part files of one way of reading the file, so that parts written with
        other choices (before a retry) are never mixed in."""
        return hashlib.sha256(json.dumps([sorted(self.as_text), self.block_bytes]).encode()).hexdigest()[:12]

    def as_dict(self) -> dict[str, Any]:
        return {"parts": self.parts, "rows": self.rows, "as_text": list(self.as_text), "block_bytes": self.block_bytes}

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> Checkpoint | None:
        if not stored:
            return None
        return cls(
            parts=int(stored.get("parts", 0)), rows=int(stored.get("rows", 0)),
            as_text=tuple(str(c) for c in stored.get("as_text", ())), block_bytes=int(stored.get("block_bytes", 0)),
        )


class Parts(Protocol):
    """Where an import writes its rows in part files of about `part_rows` rows, so that a
    killed import resumes after its last committed part instead of starting over."""

    part_rows: int

    def open(self, tag: str, index: int) -> Any:
        """A writable stream for part `index` (not yet visible as a committed part)."""

    def commit(self, tag: str, index: int, checkpoint: Checkpoint) -> None:
        """Part `index` is complete: keep it, and record `checkpoint` (it counts this part)."""

    def read(self, tag: str, index: int) -> pq.ParquetFile:
        """A committed part, to read back."""


class _Output:
    """The Parquet being written: one file (`open_sink`), or part files committed one by
    one with a checkpoint (`parts`)."""

    def __init__(
        self, schema: pa.Schema, open_sink: Callable[[], Any], parts: Parts | None, start: Checkpoint
    ) -> None:
        self._schema = schema
        self._parts = parts
        self._done = start
        self._in_part = 0
        self._sink: Any = None
        self._writer: pq.ParquetWriter | None = None
        if parts is None:
            self._open(open_sink)

    def _open(self, open_sink: Callable[[], Any]) -> None:
        self._sink = open_sink()
        self._writer = pq.ParquetWriter(self._sink, self._schema, compression="snappy")

    def room(self) -> int:
        """Rows to gather before the next write: a row group, or what the part has left."""
        if self._parts is None:
            return ROW_GROUP_ROWS
        return max(1, min(ROW_GROUP_ROWS, self._parts.part_rows - self._in_part))

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            parts = self._parts
            assert parts is not None
            self._open(lambda: parts.open(self._done.tag, self._done.parts))
        assert self._writer is not None
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self._in_part += table.num_rows
        if self._parts is not None and self._in_part >= self._parts.part_rows:
            self._commit()

    def _commit(self) -> None:
        self._close_file()
        if self._parts is not None and self._in_part:
            done = dataclasses.replace(self._done, parts=self._done.parts + 1, rows=self._done.rows + self._in_part)
            self._parts.commit(done.tag, done.parts - 1, done)
            self._done, self._in_part = done, 0

    def _close_file(self) -> None:
        writer, sink = self._writer, self._sink
        self._writer = self._sink = None
        try:
            if writer is not None:
                writer.close()
        finally:
            if sink is not None:
                sink.close()

    def finish(self) -> Checkpoint | None:
        """Close what is open (committing the last part); the parts written (None: one file)."""
        self._commit()
        return self._done if self._parts is not None else None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close_file()


def assemble(parts: Parts, checkpoint: Checkpoint, open_sink: Callable[[], Any]) -> None:
    """The committed parts, row group by row group, as one Parquet file (bounded memory)."""
    writer: pq.ParquetWriter | None = None
    with open_sink() as sink:
        try:
            for index in range(checkpoint.parts):
                part = parts.read(checkpoint.tag, index)
                try:
                    if writer is None:
                        writer = pq.ParquetWriter(sink, part.schema_arrow, compression="snappy")
                    for group in range(part.metadata.num_row_groups):
                        writer.write_table(part.read_row_group(group), row_group_size=ROW_GROUP_ROWS)
                finally:
                    part.close()
        finally:
            if writer is not None:
                writer.close()


# --- column names and statistics -------------------------------------------------------


def unique_names(names: list[str]) -> list[str]:
    """Names are trimmed; an empty name becomes column_<n> (n: 1-based position); a name
    seen before (or the reserved `__row`) gets _2, _3, ... — the first free one."""
    taken: set[str] = {ROW_COLUMN}
    result = []
    for position, raw in enumerate(names, start=1):
        base = raw.strip() or f"column_{position}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        result.append(name)
    return result


# pyarrow-stubs have no overloads of utf8_length and binary_length for a column of any
# string or binary type (string views included): call those two untyped.
_untyped_compute: Any = pc


def _is_text(type_: pa.DataType) -> bool:
    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_))


def _is_bytes(type_: pa.DataType) -> bool:
    return _is_text(type_) or bool(pa.types.is_binary(type_) or pa.types.is_large_binary(type_))


class _Stats:
    def __init__(self, schema: pa.Schema, source_names: list[str]) -> None:
        self.schema = schema
        self.source_names = source_names
        self.nulls = [0] * len(schema)
        self.length_sum = [0] * len(schema)
        self.non_null = [0] * len(schema)
        self.samples: list[list[str]] = [[] for _ in schema]

    def add(self, batch: pa.RecordBatch) -> None:
        for i, column in enumerate(batch.columns):
            self.nulls[i] += column.null_count
            if _is_text(column.type):
                lengths: pa.Array[Any] = _untyped_compute.utf8_length(column)
                self.length_sum[i] += int(pc.sum(lengths).as_py() or 0)
                self.non_null[i] += len(column) - column.null_count
                room = SAMPLE_VALUES - len(self.samples[i])
                if room > 0:
                    self.samples[i].extend(v for v in column.slice(0, room).to_pylist() if v is not None)

    def columns(self) -> list[ColumnStats]:
        result = []
        for i, f in enumerate(self.schema):
            source = self.source_names[i]
            stats = ColumnStats(
                name=f.name, type=str(f.type), null_count=self.nulls[i],
                source_name=source if source != f.name else "",
            )
            if _is_text(f.type) and self.non_null[i]:
                stats.mean_length = self.length_sum[i] / self.non_null[i]
                sample = self.samples[i]
                stats.distinct_ratio = len(set(sample)) / len(sample) if sample else 0.0
            result.append(stats)
        _mark_suggested(result)
        return result


def _mark_suggested(columns: list[ColumnStats]) -> None:
    """Text columns worth embedding: long values that mostly differ from row to row
    (free text, not categories or ids). The best ones, within half of the top score."""
    scores = {
        c.name: c.mean_length * c.distinct_ratio
        for c in columns
        if c.type in ("string", "large_string", "string_view") and c.mean_length >= 10 and c.distinct_ratio >= 0.3
    }
    if not scores:
        return
    best = max(scores.values())
    for c in columns:
        c.suggested = c.name in scores and scores[c.name] >= best / 2


# --- the import ------------------------------------------------------------------------


def import_file(
    open_source: Opener,
    open_sink: Callable[[], Any],
    filename: str,
    size_bytes: int,
    fmt: str = "",
    delimiter: str = "",
    on_progress: Progress | None = None,
    *,
    options: Options | None = None,
    limits: Limits | None = None,
    append_to: pq.ParquetFile | None = None,
    parts: Parts | None = None,
    resume: Checkpoint | None = None,
) -> ImportResult:
    """Read the source file and write the dataset's Parquet file (after the rows of
    `append_to`, when appending); raise ImportFailed with a message for a person when the
    file cannot be imported. The caller removes the sink on failure.

    With `parts` (not for appends) the rows go into part files instead, each committed with
    a checkpoint; given the last `resume` checkpoint, the rows it holds are read past, not
    written again (the caller then joins the parts with `assemble`)."""
    options = settle_options(
        open_source, filename, options or Options(format=fmt, delimiter=delimiter), limits or Limits()
    )
    limits = limits or Limits()
    if append_to is not None:
        parts = None
    start = resume if parts is not None and resume is not None else Checkpoint()
    as_string: set[str] = set(start.as_text)
    if start.block_bytes:
        options = dataclasses.replace(options, block_bytes=start.block_bytes)
    damaged = 0
    for _ in range(64):  # each retry reads one more CSV column as text
        try:
            return _import(
                open_source, open_sink, options, as_string, size_bytes, limits, on_progress, append_to, parts, start
            )
        except Damaged as failure:
            damaged += 1
            if damaged > 1:
                raise ImportFailed(str(failure)) from None
        except NeedBigBlocks:
            options = dataclasses.replace(options, block_bytes=big_block(limits))
        except ReadAsText as retry:
            if retry.column in as_string or append_to is not None:
                raise ImportFailed(retry.message) from None
            as_string.add(retry.column)  # later rows hold text where the first held numbers
        # read again from the start: new parts, named for the new choices
        start = Checkpoint(as_text=tuple(sorted(as_string)), block_bytes=options.block_bytes)
    raise ImportFailed("could not settle the column types of this CSV file")


def _import(
    open_source: Opener,
    open_sink: Callable[[], Any],
    options: Options,
    as_string: set[str],
    size_bytes: int,
    limits: Limits,
    on_progress: Progress | None,
    append_to: pq.ParquetFile | None,
    parts: Parts | None = None,
    checkpoint: Checkpoint = Checkpoint(),
) -> ImportResult:
    fmt = options.format
    checkpoint = dataclasses.replace(checkpoint, as_text=tuple(sorted(as_string)), block_bytes=options.block_bytes)
    report = on_progress or (lambda rows, total, read: None)
    quote_byte = ord(options.quote_char) if fmt == CSV and options.quote_char else None
    source = Source(open_source, options.compression, quote_byte)
    old_schema = append_to.schema_arrow if append_to is not None else None
    old_rows = append_to.metadata.num_rows if append_to is not None else 0
    rows = 0
    try:
        forced: dict[str, pa.DataType] = {}
        if old_schema is not None and fmt == CSV:
            forced = {f.name: f.type for f in old_schema if f.name != ROW_COLUMN}
        try:
            schema, batches, known_total = open_batches(source, options, as_string, {}, limits)
            if forced:
                source.close()
                source = Source(open_source, options.compression, quote_byte)
                header = unique_names(schema.names)
                renamed = dict(zip(header, schema.names, strict=True))
                _check_same_columns(old_schema, header)
                schema, batches, known_total = open_batches(
                    source, options, as_string, {renamed[n]: t for n, t in forced.items() if n in renamed}, limits
                )
        except UnicodeDecodeError:
            raise not_utf8(open_source, options.compression) from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise diagnose(open_source, options, exc, 0, limits) from None
        if fmt == CSV:
            try:
                names_in_file = schema.names
            except UnicodeDecodeError:
                raise not_utf8(open_source, options.compression) from None
            if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in schema):
                raise not_utf8(open_source, options.compression)
        else:
            names_in_file = schema.names
        if len(schema) == 0:
            raise ImportFailed("the file has no columns")
        if len(schema) > limits.max_columns:
            raise ImportFailed(
                f"the file has {len(schema)} columns; a dataset may have at most {limits.max_columns} "
                "(EMBEDVIZ_MAX_COLUMNS)"
            )
        names = unique_names(names_in_file)
        data_schema = pa.schema([pa.field(n, f.type) for n, f in zip(names, schema, strict=True)])
        order: list[int] | None = None
        if old_schema is not None:
            _check_same_columns(old_schema, names)
            target = pa.schema([f for f in old_schema if f.name != ROW_COLUMN])
            order = [names.index(f.name) for f in target]
            data_schema = target
            sources = [names_in_file[i] for i in order]
        else:
            sources = list(names_in_file)
        out_schema = pa.schema([pa.field(ROW_COLUMN, pa.int64(), nullable=False), *data_schema])
        stats = _Stats(data_schema, sources)
        pending: list[pa.RecordBatch] = []
        pending_rows = pending_bytes = 0
        skip = checkpoint.rows  # rows already in committed parts: read past them
        if parts is not None:
            for number in range(checkpoint.parts):
                part = parts.read(checkpoint.tag, number)
                try:
                    if part.schema_arrow.remove_metadata() != out_schema:
                        raise ImportFailed("the import's saved parts do not match the file; import it again")
                    for old_batch in part.iter_batches():
                        stats.add(pa.RecordBatch.from_arrays(old_batch.columns[1:], schema=data_schema))
                finally:
                    part.close()
        output = _Output(out_schema, open_sink, parts, checkpoint)
        try:
            if append_to is not None:
                for g in range(append_to.metadata.num_row_groups):
                    group = append_to.read_row_group(g).select(out_schema.names).cast(out_schema)
                    for old_batch in group.to_batches():
                        stats.add(pa.RecordBatch.from_arrays(old_batch.columns[1:], schema=data_schema))
                    output.write(group)
            blocks = 0  # text blocks parsed (CSV and JSON Lines give one batch a block)
            while True:
                try:
                    batch = next(batches)
                    blocks += 1
                except StopIteration:
                    break
                except UnicodeDecodeError:
                    raise not_utf8(open_source, options.compression) from None
                except (pa.ArrowInvalid, OSError) as exc:
                    raise diagnose(open_source, options, exc, rows, limits) from None
                if batch.num_rows == 0:
                    continue
                columns = batch.columns if order is None else [batch.column(i) for i in order]
                if order is not None and fmt != CSV:
                    try:
                        columns = [c.cast(f.type) for c, f in zip(columns, data_schema, strict=True)]
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise ImportFailed(f"the new rows do not fit the dataset's column types: {exc}") from None
                try:
                    batch = pa.RecordBatch.from_arrays(columns, schema=data_schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise ImportFailed(f"the new rows do not fit the dataset's column types: {exc}") from None
                if skip:
                    passed = min(skip, batch.num_rows)
                    skip -= passed
                    rows += passed
                    if passed == batch.num_rows:
                        continue
                    batch = batch.slice(passed)
                _check_cells(batch, rows, limits)
                if rows + batch.num_rows > limits.max_rows:
                    raise ImportFailed(
                        f"the file has more than {limits.max_rows} rows; a dataset may have at most "
                        f"{limits.max_rows} (EMBEDVIZ_MAX_ROWS)"
                    )
                stats.add(batch)
                start = old_rows + rows
                index = pa.array(np.arange(start, start + batch.num_rows, dtype=np.int64))
                pending.append(pa.RecordBatch.from_arrays([index, *batch.columns], schema=out_schema))
                rows += batch.num_rows
                pending_rows += batch.num_rows
                pending_bytes += batch.nbytes
                if pending_rows >= output.room() or pending_bytes >= ROW_GROUP_BYTES:
                    output.write(pa.Table.from_batches(pending))
                    pending, pending_rows, pending_bytes = [], 0, 0
                if known_total:
                    report(rows, known_total, int(size_bytes * rows / known_total))
                else:
                    parsed = parsed_bytes(blocks, options.block_bytes or SMALL_BLOCK, source, size_bytes)
                    report(rows, max(rows + 1, int(rows * size_bytes / parsed)), parsed)
            if pending:
                output.write(pa.Table.from_batches(pending))
        except BaseException:
            output.abort()
            raise
        if fmt == CSV and source.text.counted % 2 == 1:
            problem = find_unclosed_quote(open_source, options)
            if problem:
                output.abort()
                raise ImportFailed(problem)
        if rows == 0:
            output.abort()
            raise ImportFailed("the file has a header but no rows" if fmt == CSV else "the file has no rows")
        if skip:
            output.abort()
            raise ImportFailed("the file has fewer rows than the import's saved parts; import it again")
        part_count = output.finish()
        report(rows, rows, size_bytes)
        return ImportResult(
            format=fmt, delimiter=options.delimiter, row_count=old_rows + rows, columns=stats.columns(),
            encoding=options.encoding, quote_char=options.quote_char, compression=options.compression,
            appended_rows=rows, parts=part_count,
        )
    finally:
        source.close()


def _check_cells(batch: pa.RecordBatch, rows_before: int, limits: Limits) -> None:
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not _is_bytes(column.type):
            continue
        lengths: pa.Array[Any] = _untyped_compute.binary_length(column)
        longest = pc.max(lengths).as_py()
        if longest is not None and longest > limits.max_cell_bytes:
            at = int(pc.index(lengths, longest).as_py())
            raise ImportFailed(
                f"row {rows_before + at + 1}, column '{name}' holds {longest} bytes; a cell may hold at most "
                f"{limits.max_cell_bytes} bytes (EMBEDVIZ_MAX_CELL_BYTES)"
            )


def _check_same_columns(old_schema: pa.Schema | None, names: list[str]) -> None:
    if old_schema is None:
        return
    old = [n for n in old_schema.names if n != ROW_COLUMN]
    missing = [n for n in old if n not in names]
    extra = [n for n in names if n not in old]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"'{n}'" for n in missing))
        if extra:
            parts.append("not in the dataset " + ", ".join(f"'{n}'" for n in extra))
        raise ImportFailed(
            f"the new file's columns differ from the dataset's ({'; '.join(parts)}); "
            f"the dataset has: {', '.join(old)}"
        )


def read_column_names(
    open_source: Opener, filename: str, options: Options, limits: Limits
) -> tuple[Options, list[str]]:
    """The settled options and the (unique) column names of a file, cheaply: for checking
    an append before it is queued."""
    options = settle_options(open_source, filename, options, limits)
    source = Source(open_source, options.compression)
    try:
        schema, _, _ = open_batches(
            source, dataclasses.replace(options, block_bytes=big_block(limits)), set(), {}, limits
        )
        return options, unique_names(schema.names)
    except UnicodeDecodeError:
        raise not_utf8(open_source, options.compression) from None
    except (pa.ArrowInvalid, OSError) as exc:
        failure = diagnose(open_source, dataclasses.replace(options, block_bytes=big_block(limits)), exc, 0, limits)
        if isinstance(failure, Damaged):
            failure = ImportFailed(str(failure))
        raise (failure if isinstance(failure, ImportFailed) else ImportFailed(str(exc))) from None
    finally:
        source.close()
