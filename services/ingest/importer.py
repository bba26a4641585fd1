"""Reading an uploaded file (CSV/TSV, Parquet, JSON Lines, Arrow IPC) into the dataset's
Parquet file, in bounded batches, with a stable `__row` index and column statistics.

Plain synchronous Python over pyarrow; the service runs it in a worker thread."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.json as pajson
import pyarrow.parquet as pq

ROW_COLUMN = "__row"
CSV, PARQUET, JSONL, ARROW = "csv", "parquet", "jsonl", "arrow"
FORMATS = (CSV, PARQUET, JSONL, ARROW)
SNIFF_BYTES = 64 * 1024
ROW_GROUP_ROWS = 64 * 1024
SAMPLE_VALUES = 10_000
_EXTENSIONS = {
    ".csv": CSV, ".tsv": CSV, ".tab": CSV, ".txt": CSV,
    ".parquet": PARQUET, ".pq": PARQUET,
    ".jsonl": JSONL, ".ndjson": JSONL, ".json": JSONL,
    ".arrow": ARROW, ".feather": ARROW, ".ipc": ARROW, ".arrows": ARROW,
}


class ImportFailed(Exception):
    """The file cannot be imported; the message is for the person who uploaded it."""


class ImportStopped(Exception):
    """The import was stopped from outside (the dataset was deleted)."""


@dataclass
class ColumnStats:
    name: str
    type: str
    null_count: int = 0
    mean_length: float = 0.0
    distinct_ratio: float = 0.0
    suggested: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportResult:
    format: str
    delimiter: str
    row_count: int
    columns: list[ColumnStats] = field(default_factory=list)


Opener = Callable[[], BinaryIO]
Progress = Callable[[int, int], None]  # rows written, estimated rows in all (0: unknown)


# --- format detection ------------------------------------------------------------------


def detect_format(filename: str, head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return PARQUET
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return ARROW
    lowered = filename.lower()
    for ext, fmt in _EXTENSIONS.items():
        if lowered.endswith(ext):
            return fmt
    if head.lstrip()[:1] == b"{":
        return JSONL
    return CSV


def sniff_delimiter(filename: str, head: bytes) -> str:
    default = "\t" if filename.lower().endswith((".tsv", ".tab")) else ","
    text = head.decode("utf-8", errors="replace")
    if len(head) >= SNIFF_BYTES and "\n" in text:
        text = text[: text.rfind("\n")]
    try:
        return csv.Sniffer().sniff(text, delimiters=",\t;|").delimiter
    except csv.Error:
        return default


# --- column names and statistics -------------------------------------------------------


def unique_names(names: list[str]) -> list[str]:
    """Empty names become column_<n> (1-based position), repeats get _2, _3, ...; the
    reserved `__row` is never used by a data column."""
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


def _is_text(type_: pa.DataType) -> bool:
    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_))


class _Stats:
    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.nulls = [0] * len(schema)
        self.length_sum = [0] * len(schema)
        self.non_null = [0] * len(schema)
        self.samples: list[list[str]] = [[] for _ in schema]

    def add(self, batch: pa.RecordBatch) -> None:
        for i, column in enumerate(batch.columns):
            self.nulls[i] += column.null_count
            if _is_text(column.type):
                lengths = pc.utf8_length(column)
                self.length_sum[i] += int(pc.sum(lengths).as_py() or 0)
                self.non_null[i] += len(column) - column.null_count
                room = SAMPLE_VALUES - len(self.samples[i])
                if room > 0:
                    self.samples[i].extend(v for v in column.slice(0, room).to_pylist() if v is not None)

    def columns(self) -> list[ColumnStats]:
        result = []
        for i, f in enumerate(self.schema):
            stats = ColumnStats(name=f.name, type=str(f.type), null_count=self.nulls[i])
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


# --- readers ---------------------------------------------------------------------------


class _CountingReader(io.RawIOBase):
    """A file wrapper that counts the bytes read (progress) and the quote characters seen
    (an odd count is the cheap hint of an unclosed quote)."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.bytes_read = 0
        self.quotes = 0
        self.total_rows = 0  # known up front for Parquet and Arrow files

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.bytes_read += n
        if n:
            self.quotes += int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 0x22))
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


def _csv_batches(source: BinaryIO, delimiter: str, as_string: set[str]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    reader = pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in as_string},
            strings_can_be_null=False,
        ),
    )
    return reader.schema, iter(reader)


_CSV_COLUMN_ERROR = re.compile(r"In CSV column #(\d+):[^\n]*CSV conversion error")


def _raise_for_binary(schema: pa.Schema) -> None:
    try:
        names = schema.names
    except UnicodeDecodeError:
        raise ImportFailed("the file's header is not valid UTF-8 text; save the file as UTF-8 and upload it again") from None
    for name, f in zip(names, schema, strict=True):
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            raise ImportFailed(
                f"column '{name}' is not valid UTF-8 text; save the file as UTF-8 and upload it again"
            )


def _explain(fmt: str, exc: Exception) -> ImportFailed:
    message = str(exc).split("\n")[0]
    if isinstance(exc, UnicodeDecodeError) or "UTF8" in message or "UTF-8" in message:
        return ImportFailed("the file is not valid UTF-8 text; save it as UTF-8 and upload it again")
    what = {CSV: "CSV", PARQUET: "Parquet", JSONL: "JSON Lines", ARROW: "Arrow"}[fmt]
    return ImportFailed(f"could not read the file as {what}: {message}")


# --- the import ------------------------------------------------------------------------


def import_file(
    open_source: Opener,
    open_sink: Callable[[], Any],
    filename: str,
    size_bytes: int,
    fmt: str = "",
    delimiter: str = "",
    on_progress: Progress | None = None,
) -> ImportResult:
    """Read the source file and write the dataset's Parquet file; raise ImportFailed with
    a message for a person when the file cannot be imported. The caller removes the sink
    on failure."""
    with open_source() as f:
        head = f.read(SNIFF_BYTES)
    if not head:
        raise ImportFailed("the file is empty")
    fmt = fmt or detect_format(filename, head)
    if fmt == CSV:
        delimiter = delimiter or sniff_delimiter(filename, head)
        as_string: set[str] = set()
        for _ in range(64):  # each retry reads one more column as text
            try:
                return _import(open_source, open_sink, fmt, delimiter, as_string, size_bytes, on_progress)
            except pa.ArrowInvalid as exc:
                match = _CSV_COLUMN_ERROR.search(str(exc))
                names = _csv_header(open_source, delimiter)
                if match is None or names is None or int(match.group(1)) >= len(names):
                    raise _explain(fmt, exc) from None
                name = names[int(match.group(1))]
                if name in as_string:
                    raise _explain(fmt, exc) from None
                as_string.add(name)  # later rows hold text where the first held numbers
        raise ImportFailed("could not settle the column types of this CSV file")
    return _import(open_source, open_sink, fmt, "", set(), size_bytes, on_progress)


def _csv_header(open_source: Opener, delimiter: str) -> list[str] | None:
    try:
        with open_source() as f:
            schema, _ = _csv_batches(f, delimiter, set())
        return schema.names
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None


def _import(
    open_source: Opener,
    open_sink: Callable[[], Any],
    fmt: str,
    delimiter: str,
    as_string: set[str],
    size_bytes: int,
    on_progress: Progress | None,
) -> ImportResult:
    report = on_progress or (lambda rows, total: None)

    def progress(rows: int, read: int) -> None:
        if counter.total_rows:
            report(rows, counter.total_rows)
        elif read:  # text formats: extrapolate from the share of bytes read so far
            report(rows, max(rows, int(rows * max(size_bytes, read) / read)))
        else:
            report(rows, 0)

    rows = 0
    counter = _CountingReader(open_source())
    try:
        try:
            schema, batches = _open(fmt, counter, delimiter, as_string)
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
            raise _explain(fmt, exc) from None
        if fmt == CSV:
            _raise_for_binary(schema)
        if len(schema) == 0:
            raise ImportFailed("the file has no columns")
        names = unique_names(schema.names)
        data_schema = pa.schema([pa.field(n, f.type) for n, f in zip(names, schema, strict=True)])
        out_schema = pa.schema([pa.field(ROW_COLUMN, pa.int64(), nullable=False), *data_schema])
        stats = _Stats(data_schema)
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        with open_sink() as sink, pq.ParquetWriter(sink, out_schema, compression="zstd") as writer:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                    if fmt == CSV and _CSV_COLUMN_ERROR.search(str(exc)):
                        raise  # retried by import_file with that column as text
                    raise _explain(fmt, exc) from None
                if batch.num_rows == 0:
                    continue
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=data_schema)
                stats.add(batch)
                index = pa.array(np.arange(rows, rows + batch.num_rows, dtype=np.int64))
                pending.append(pa.RecordBatch.from_arrays([index, *batch.columns], schema=out_schema))
                rows += batch.num_rows
                pending_rows += batch.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size=ROW_GROUP_ROWS)
                    pending, pending_rows = [], 0
                progress(rows, counter.bytes_read)
            if pending:
                writer.write_table(pa.Table.from_batches(pending), row_group_size=ROW_GROUP_ROWS)
        if fmt == CSV and counter.quotes % 2 == 1:
            _check_quotes(open_source)
        if rows == 0:
            raise ImportFailed("the file has a header but no rows" if fmt == CSV else "the file has no rows")
        report(rows, rows)
        return ImportResult(format=fmt, delimiter=delimiter, row_count=rows, columns=stats.columns())
    finally:
        counter.close()


def _check_quotes(open_source: Opener) -> None:
    """An odd number of quote characters: either literal quotes inside unquoted values
    (fine) or a quoted value that never ends (pyarrow silently takes the rest of the file)."""
    with open_source() as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")
        try:
            for _ in csv.reader(text, strict=True):
                pass
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise ImportFailed(
                    "a quoted value is never closed: a \" opens a value that runs to the end of the file"
                ) from None


def _open(fmt: str, source: _CountingReader, delimiter: str, as_string: set[str]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    if fmt == CSV:
        return _csv_batches(source, delimiter, as_string)
    if fmt == JSONL:
        reader = pajson.open_json(source, read_options=pajson.ReadOptions(block_size=1 << 20, use_threads=False))
        return reader.schema, iter(reader)
    if fmt == PARQUET:
        parquet = pq.ParquetFile(_seekable(source))
        source.total_rows = parquet.metadata.num_rows
        return parquet.schema_arrow, parquet.iter_batches(batch_size=16 * 1024)
    if fmt == ARROW:
        seekable = _seekable(source)
        try:
            file_reader = ipc.open_file(seekable)
            source.total_rows = sum(file_reader.get_batch(i).num_rows for i in range(file_reader.num_record_batches))
            return file_reader.schema, (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
        except pa.ArrowInvalid:
            seekable.seek(0)
            stream_reader = ipc.open_stream(seekable)
            return stream_reader.schema, iter(stream_reader)
    raise ImportFailed(f"unknown format '{fmt}'")


def _seekable(source: _CountingReader) -> Any:
    inner = source._inner  # noqa: SLF001 - Parquet and Arrow files need random access
    if hasattr(inner, "seekable") and inner.seekable():
        return inner
    raise ImportFailed("the file cannot be read with random access")
