"""Reading an uploaded file (CSV/TSV, Parquet, JSON Lines, Arrow IPC; the text formats
also gzip- or zstd-compressed) into the dataset's Parquet file, in bounded batches, with a
stable `__row` index and column statistics. Every way a file can be wrong ends in
ImportFailed with a message for a person, naming the line and column where it can.

Plain synchronous Python over pyarrow; the service runs it in a worker thread."""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
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
TEXT_FORMATS = (CSV, JSONL)
NONE, GZIP, ZSTD = "none", "gzip", "zstd"
COMPRESSIONS = (NONE, GZIP, ZSTD)
UTF8, UTF16, LATIN1 = "utf-8", "utf-16", "latin-1"
ENCODINGS = (UTF8, UTF16, LATIN1)
QUOTES = ('"', "'")
SNIFF_BYTES = 64 * 1024
ROW_GROUP_ROWS = 64 * 1024
ROW_GROUP_BYTES = 32 * 1024 * 1024
SAMPLE_VALUES = 10_000
DIAGNOSE_BLOCK = 1 << 20
SMALL_BLOCK = 1 << 20  # a row must fit in a block; longer ones retry with big_block(limits)
_EXTENSIONS = {
    ".csv": CSV, ".tsv": CSV, ".tab": CSV, ".txt": CSV,
    ".parquet": PARQUET, ".pq": PARQUET,
    ".jsonl": JSONL, ".ndjson": JSONL, ".json": JSONL,
    ".arrow": ARROW, ".feather": ARROW, ".ipc": ARROW, ".arrows": ARROW,
}
_COMPRESSED_EXTENSIONS = {".gz": GZIP, ".gzip": GZIP, ".zst": ZSTD, ".zstd": ZSTD}
_NAMES = {CSV: "CSV", PARQUET: "Parquet", JSONL: "JSON Lines", ARROW: "Arrow"}


class ImportFailed(Exception):
    """The file cannot be imported; the message is for the person who uploaded it."""


class ImportStopped(Exception):
    """The import was stopped from outside (the dataset was deleted)."""


@dataclass
class Limits:
    """What one import may hold; each has an EMBEDVIZ_MAX_* setting (see server.py)."""

    max_rows: int = 50_000_000
    max_columns: int = 2_000
    max_cell_bytes: int = 4 * 1024 * 1024


@dataclass
class Options:
    """How to read the file; empty means sniff it."""

    format: str = ""
    delimiter: str = ""
    quote_char: str = ""
    encoding: str = ""
    compression: str = ""
    block_bytes: int = 0  # the text readers' block (0: SMALL_BLOCK); set by a retry, not by users


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


Opener = Callable[[], BinaryIO]
# rows written, estimated rows in all (0: unknown), bytes of the source file read so far
Progress = Callable[[int, int, int], None]


# --- sniffing --------------------------------------------------------------------------


def detect_compression(filename: str, head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return ZSTD
    return NONE


def _strip_compression(filename: str) -> str:
    lowered = filename.lower()
    for ext in _COMPRESSED_EXTENSIONS:
        if lowered.endswith(ext):
            return filename[: -len(ext)]
    return filename


def detect_format(filename: str, head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return PARQUET
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return ARROW
    lowered = _strip_compression(filename).lower()
    for ext, fmt in _EXTENSIONS.items():
        if lowered.endswith(ext):
            return fmt
    if _decode_head(head, sniff_encoding(head)).lstrip("\ufeff \t\r\n")[:1] == "{":
        return JSONL
    return CSV


def sniff_encoding(head: bytes) -> str:
    """A BOM names the encoding; else UTF-8 when the bytes are UTF-8 (also when a stray
    invalid byte sits among real multi-byte characters: that is broken UTF-8, reported
    with its line); else Latin-1 when high bytes appear that are never UTF-8."""
    if head.startswith(codecs.BOM_UTF8):
        return UTF8
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return UTF16
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return UTF8
    except UnicodeDecodeError:
        pass
    if re.search(rb"[\xc2-\xf4][\x80-\xbf]+", head) and _valid_multibyte(head):
        return UTF8
    return LATIN1


def _valid_multibyte(head: bytes) -> bool:
    for match in re.finditer(rb"[\xc2-\xf4][\x80-\xbf]{1,3}", head):
        try:
            match.group().decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def _decode_head(head: bytes, encoding: str) -> str:
    text = head.decode(encoding, errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def sniff_dialect(filename: str, text: str, full: bool) -> tuple[str, str]:
    """(delimiter, quote char) from the first lines of the file."""
    default = "\t" if _strip_compression(filename).lower().endswith((".tsv", ".tab")) else ","
    if not full and "\n" in text:
        text = text[: text.rfind("\n")]
    try:
        dialect = csv.Sniffer().sniff(text, delimiters=",\t;|")
        delimiter = dialect.delimiter
        quote = dialect.quotechar if dialect.quotechar in QUOTES else '"'
    except csv.Error:
        delimiter, quote = default, '"'
    first_line = text.split("\n", 1)[0]
    if default == "\t" and delimiter != "\t" and "\t" in first_line:
        delimiter = "\t"
    return delimiter, quote


def sniff_delimiter(filename: str, head: bytes) -> str:
    return sniff_dialect(filename, _decode_head(head, sniff_encoding(head)), len(head) < SNIFF_BYTES)[0]


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
                lengths = pc.utf8_length(column)
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


# --- streams ---------------------------------------------------------------------------


class _CountingReader(io.RawIOBase):
    """A file wrapper that counts the bytes read and, when asked, one byte value (the
    quote character: an odd count is the cheap hint of an unclosed quote)."""

    def __init__(self, inner: Any, count_byte: int | None = None) -> None:
        self._inner = inner
        self._count_byte = count_byte
        self.bytes_read = 0
        self.counted = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.bytes_read += n
        if n and self._count_byte is not None:
            self.counted += int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == self._count_byte))
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


class _Source:
    """The uploaded file opened for reading: raw bytes counted (progress), then the
    decompressed bytes (what the parsers read)."""

    def __init__(self, open_source: Opener, compression: str, count_byte: int | None = None) -> None:
        self.raw = _CountingReader(open_source())
        stream: Any = self.raw
        if compression != NONE:
            stream = pa.CompressedInputStream(pa.PythonFile(self.raw, mode="r"), compression)
        self.text = _CountingReader(stream, count_byte)

    def close(self) -> None:
        self.text.close()
        self.raw.close()


def _read_head(open_source: Opener, compression: str) -> bytes:
    source = _Source(open_source, compression)
    try:
        return _read_exactly(source.text, SNIFF_BYTES)
    except (OSError, pa.ArrowException) as exc:
        raise ImportFailed(f"the {compression} data is damaged or cut short ({exc}); upload the complete file") from None
    finally:
        source.close()


def _read_exactly(stream: Any, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


# --- diagnosis: where exactly a text file goes wrong ------------------------------------


def _position(prefix: bytes, encoding: str) -> tuple[int, int]:
    """1-based (line, column) of the character after `prefix`."""
    text = prefix.decode(encoding, errors="replace")
    line = text.count("\n") + 1
    return line, len(text) - (text.rfind("\n") + 1) + 1


def find_bad_utf8(open_source: Opener, compression: str) -> str | None:
    """'line L, column C: byte 0xNN ...' for the first byte that is not UTF-8, or None."""
    source = _Source(open_source, compression)
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, line_start_chars = 1, b""
    try:
        while True:
            block = source.text.read(DIAGNOSE_BLOCK)
            final = not block
            try:
                decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                pending = decoder.getstate()[0]  # undecoded bytes of the previous block
                data = pending + block
                # decode() raised on data[exc.start]; find it relative to this block
                before = data[: exc.start] if len(data) > exc.start else data
                head = line_start_chars + before
                line += before.count(b"\n")
                current = head[head.rfind(b"\n") + 1 :] if b"\n" in before else head
                column = len(current.decode("utf-8", errors="replace")) + 1
                bad = data[exc.start] if exc.start < len(data) else 0
                return f"line {line}, column {column}: byte {bad:#04x} is not valid UTF-8"
            if final:
                return None
            newline = block.rfind(b"\n")
            if newline >= 0:
                line += block.count(b"\n")
                line_start_chars = block[newline + 1 :]
            else:
                line_start_chars += block
                line_start_chars = line_start_chars[-DIAGNOSE_BLOCK:]
    except (OSError, pa.ArrowException):
        return None
    finally:
        source.close()


def _not_utf8(open_source: Opener, compression: str) -> ImportFailed:
    where = find_bad_utf8(open_source, compression)
    detail = f" ({where})" if where else ""
    return ImportFailed(
        f"the file is not valid UTF-8 text{detail}; save it as UTF-8, or choose its encoding "
        "(latin-1, utf-16) when you finish the upload"
    )


def _find_bad_json_line(open_source: Opener, compression: str, encoding: str) -> str | None:
    source = _Source(open_source, compression)
    try:
        text = io.TextIOWrapper(source.text, encoding=encoding, errors="strict", newline="")  # type: ignore[arg-type]
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {number}, column {exc.colno} is not valid JSON: {exc.msg}"
            if not isinstance(value, dict):
                return f"line {number} is a JSON {type(value).__name__}, not an object; each line must be one object"
        return None
    except (UnicodeDecodeError, OSError, pa.ArrowException):
        return None
    finally:
        source.close()


def _find_ragged_line(open_source: Opener, options: Options) -> str:
    """'line N' of the first record whose number of values differs from the header's."""
    source = _Source(open_source, options.compression)
    try:
        text = io.TextIOWrapper(source.text, encoding=options.encoding, errors="replace", newline="")  # type: ignore[arg-type]
        reader = csv.reader(text, delimiter=options.delimiter, quotechar=options.quote_char)
        width, start = None, 1
        for record in reader:
            if width is None:
                width = len(record)
            elif len(record) != width and record:
                return f"line {start}"
            start = reader.line_num + 1
        return ""
    except csv.Error:
        return ""
    finally:
        source.close()


def _find_unclosed_quote(open_source: Opener, options: Options) -> str | None:
    """An odd number of quote characters: either literal quotes inside unquoted values
    (fine) or a quoted value that never ends (pyarrow silently takes the rest of the file)."""
    source = _Source(open_source, options.compression)
    try:
        text = io.TextIOWrapper(source.text, encoding=options.encoding, errors="replace", newline="")  # type: ignore[arg-type]
        reader = csv.reader(text, delimiter=options.delimiter, quotechar=options.quote_char, strict=True)
        last_line = 0
        try:
            for _ in reader:
                last_line = reader.line_num
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                return (
                    f"a quoted value is never closed: the {options.quote_char} on line {last_line + 1} "
                    "opens a value that runs to the end of the file"
                )
        return None
    finally:
        source.close()


# --- errors from pyarrow, in words ---------------------------------------------------------


_CSV_COLUMN_ERROR = re.compile(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (\w+): invalid value '(.*)'", re.S)
_CSV_ROW_ERROR = re.compile(r"CSV parse error: (?:Row #(\d+): )?Expected (\d+) columns, got (\d+)")


def _explain(fmt: str, exc: Exception, rows_done: int, limits: Limits, where_found: str = "") -> ImportFailed:
    message = str(exc).split("\n")[0]
    if "straddling" in message or "straddles" in message:
        return ImportFailed(
            f"row {rows_done + 1} is too long to read: one value or line holds more than the "
            f"{limits.max_cell_bytes} bytes a cell may have (EMBEDVIZ_MAX_CELL_BYTES), or a quote is never closed"
        )
    ragged = _CSV_ROW_ERROR.search(message)
    if ragged:
        where = f"line {ragged.group(1)}" if ragged.group(1) else "a row"
        if where_found:
            where = where_found
        return ImportFailed(
            f"{where} has {ragged.group(3)} values where the header has {ragged.group(2)} columns; "
            "every row needs the same number of values (check the delimiter and quotes on that line)"
        )
    what = _NAMES[fmt]
    if fmt == PARQUET and ("magic bytes" in message or "footer" in message.lower() or "Couldn't deserialize" in message):
        return ImportFailed(
            "could not read the file as Parquet: it is cut short or damaged (its footer is missing or broken); "
            "upload the complete file"
        )
    if fmt == ARROW:
        return ImportFailed(f"could not read the file as Arrow IPC: it is cut short or damaged ({message})")
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
    *,
    options: Options | None = None,
    limits: Limits | None = None,
    append_to: pq.ParquetFile | None = None,
) -> ImportResult:
    """Read the source file and write the dataset's Parquet file (after the rows of
    `append_to`, when appending); raise ImportFailed with a message for a person when the
    file cannot be imported. The caller removes the sink on failure."""
    options = settle_options(open_source, filename, options or Options(format=fmt, delimiter=delimiter), limits or Limits())
    limits = limits or Limits()
    as_string: set[str] = set()
    damaged = 0
    for _ in range(64):  # each retry reads one more CSV column as text
        try:
            return _import(open_source, open_sink, options, as_string, size_bytes, limits, on_progress, append_to)
        except _Damaged as failure:
            damaged += 1
            if damaged > 1:
                raise ImportFailed(str(failure)) from None
        except _NeedBigBlocks:
            options = dataclasses.replace(options, block_bytes=big_block(limits))
        except _Retry as retry:
            if retry.column in as_string or append_to is not None:
                raise ImportFailed(retry.message) from None
            as_string.add(retry.column)  # later rows hold text where the first held numbers
    raise ImportFailed("could not settle the column types of this CSV file")


def settle_options(open_source: Opener, filename: str, options: Options, limits: Limits) -> Options:
    """Fill in what was not given: compression, format, encoding, delimiter, quote."""
    with open_source() as f:
        raw_head = f.read(SNIFF_BYTES)
    if not raw_head:
        raise ImportFailed("the file is empty")
    compression = options.compression or detect_compression(filename, raw_head)
    head = _read_head(open_source, compression) if compression != NONE else raw_head
    if not head:
        raise ImportFailed("the file is empty (after decompressing it)")
    fmt = options.format or detect_format(filename, head)
    if fmt not in TEXT_FORMATS:
        if compression != NONE:
            raise ImportFailed(f"{_NAMES[fmt]} files are read as they are; upload the file without {compression} compression")
        return Options(format=fmt, compression=NONE)
    encoding = options.encoding or sniff_encoding(head)
    if encoding != UTF16 and b"\x00" in head:
        at = head.index(b"\x00")
        line, column = _position(head[:at], LATIN1)
        raise ImportFailed(
            f"the file looks binary, not {_NAMES[fmt]} text (a zero byte at line {line}, column {column}); "
            "upload a text file, or name a Parquet or Arrow file .parquet or .arrow"
        )
    if fmt == JSONL:
        return Options(format=fmt, compression=compression, encoding=encoding)
    text = _decode_head(head, encoding)
    sniffed_delimiter, sniffed_quote = sniff_dialect(filename, text, len(head) < SNIFF_BYTES)
    delimiter = options.delimiter or sniffed_delimiter
    quote = options.quote_char or sniffed_quote
    first_line = text.split("\n", 1)[0]
    count = first_line.count(delimiter) + 1
    if count > limits.max_columns:
        at_least = "at least " if "\n" not in text else ""
        raise ImportFailed(
            f"the header has {at_least}{count} columns; a dataset may have at most "
            f"{limits.max_columns} (EMBEDVIZ_MAX_COLUMNS)"
        )
    return Options(format=fmt, delimiter=delimiter, quote_char=quote, encoding=encoding, compression=compression)


class _Retry(Exception):
    """A CSV column typed from the first rows meets a value of another type later on:
    read it again with that column as text (or fail with `message` if it already was)."""

    def __init__(self, column: str, message: str) -> None:
        self.column = column
        self.message = message


def big_block(limits: Limits) -> int:
    """A block that holds a row with a cell of the largest allowed size."""
    return max(SMALL_BLOCK, min(2 * limits.max_cell_bytes + (1 << 16), 256 << 20))


class _NeedBigBlocks(Exception):
    """A row did not fit in a small block: read the file again with big ones."""


class _Damaged(Exception):
    """The compressed stream failed mid-file. Once it was a read that went wrong, not the
    file (seen under load), so the file is read again before a person is told it is damaged."""


def _open_csv(source: _Source, options: Options, as_string: set[str], types: dict[str, pa.DataType], limits: Limits) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    block = options.block_bytes or SMALL_BLOCK
    reader = pacsv.open_csv(
        source.text,
        read_options=pacsv.ReadOptions(block_size=block, use_threads=True, encoding=options.encoding),
        parse_options=pacsv.ParseOptions(
            delimiter=options.delimiter, quote_char=options.quote_char, newlines_in_values=True
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={**{name: pa.string() for name in as_string}, **types},
            strings_can_be_null=False,
        ),
    )
    return reader.schema, iter(reader)


def _open(source: _Source, options: Options, as_string: set[str], types: dict[str, pa.DataType], limits: Limits) -> tuple[pa.Schema, Iterator[pa.RecordBatch], int]:
    """(schema, batches, rows in all when the format tells it up front, else 0)"""
    fmt = options.format
    if fmt == CSV:
        schema, batches = _open_csv(source, options, as_string, types, limits)
        return schema, batches, 0
    if fmt == JSONL:
        block = options.block_bytes or SMALL_BLOCK
        stream: Any = source.text if options.encoding == UTF8 else _Transcoder(source.text, options.encoding)
        reader = pajson.open_json(stream, read_options=pajson.ReadOptions(block_size=block, use_threads=True))
        return reader.schema, iter(reader), 0
    inner = source.raw._inner  # noqa: SLF001 - Parquet and Arrow files need random access
    if not (hasattr(inner, "seekable") and inner.seekable()):
        raise ImportFailed("the file cannot be read with random access")
    if fmt == PARQUET:
        parquet = pq.ParquetFile(inner)
        return parquet.schema_arrow, parquet.iter_batches(batch_size=16 * 1024), parquet.metadata.num_rows
    try:
        file_reader = ipc.open_file(inner)
        total = sum(file_reader.get_batch(i).num_rows for i in range(file_reader.num_record_batches))
        return file_reader.schema, (file_reader.get_batch(i) for i in range(file_reader.num_record_batches)), total
    except pa.ArrowInvalid:
        inner.seek(0)
        stream_reader = ipc.open_stream(inner)
        return stream_reader.schema, iter(stream_reader), 0


class _Transcoder(io.RawIOBase):
    """Bytes in some encoding in, UTF-8 out (pyarrow's JSON reader reads UTF-8 only)."""

    def __init__(self, inner: Any, encoding: str) -> None:
        self._inner = inner
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._buffer = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while len(self._buffer) < len(buffer) and not self._eof:
            data = self._inner.read(DIAGNOSE_BLOCK)
            self._eof = not data
            self._buffer += self._decoder.decode(data, final=self._eof).encode("utf-8")
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def _import(
    open_source: Opener,
    open_sink: Callable[[], Any],
    options: Options,
    as_string: set[str],
    size_bytes: int,
    limits: Limits,
    on_progress: Progress | None,
    append_to: pq.ParquetFile | None,
) -> ImportResult:
    fmt = options.format
    report = on_progress or (lambda rows, total, read: None)
    quote_byte = ord(options.quote_char) if fmt == CSV and options.quote_char else None
    source = _Source(open_source, options.compression, quote_byte)
    old_schema = append_to.schema_arrow if append_to is not None else None
    old_rows = append_to.metadata.num_rows if append_to is not None else 0
    rows = 0
    try:
        forced: dict[str, pa.DataType] = {}
        if old_schema is not None and fmt == CSV:
            forced = {f.name: f.type for f in old_schema if f.name != ROW_COLUMN}
        try:
            schema, batches, known_total = _open(source, options, as_string, {}, limits)
            if forced:
                source.close()
                source = _Source(open_source, options.compression, quote_byte)
                header = unique_names(schema.names)
                renamed = dict(zip(header, schema.names, strict=True))
                _check_same_columns(old_schema, header)
                schema, batches, known_total = _open(
                    source, options, as_string, {renamed[n]: t for n, t in forced.items() if n in renamed}, limits
                )
        except UnicodeDecodeError:
            raise _not_utf8(open_source, options.compression) from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise _failure(open_source, options, exc, 0, limits) from None
        if fmt == CSV:
            try:
                names_in_file = schema.names
            except UnicodeDecodeError:
                raise _not_utf8(open_source, options.compression) from None
            if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in schema):
                raise _not_utf8(open_source, options.compression)
        else:
            names_in_file = schema.names
        if len(schema) == 0:
            raise ImportFailed("the file has no columns")
        if len(schema) > limits.max_columns:
            raise ImportFailed(
                f"the file has {len(schema)} columns; a dataset may have at most {limits.max_columns} (EMBEDVIZ_MAX_COLUMNS)"
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
        with open_sink() as sink, pq.ParquetWriter(sink, out_schema, compression="snappy") as writer:
            if append_to is not None:
                for g in range(append_to.metadata.num_row_groups):
                    group = append_to.read_row_group(g).select(out_schema.names).cast(out_schema)
                    for old_batch in group.to_batches():
                        stats.add(pa.RecordBatch.from_arrays(old_batch.columns[1:], schema=data_schema))
                    writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except UnicodeDecodeError:
                    raise _not_utf8(open_source, options.compression) from None
                except (pa.ArrowInvalid, OSError) as exc:
                    raise _failure(open_source, options, exc, rows, limits) from None
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
                if pending_rows >= ROW_GROUP_ROWS or pending_bytes >= ROW_GROUP_BYTES:
                    writer.write_table(pa.Table.from_batches(pending), row_group_size=ROW_GROUP_ROWS)
                    pending, pending_rows, pending_bytes = [], 0, 0
                read = source.raw.bytes_read
                if known_total:
                    report(rows, known_total, int(size_bytes * rows / known_total))
                else:
                    report(rows, max(rows, int(rows * max(size_bytes, read) / read)) if read else 0, read)
            if pending:
                writer.write_table(pa.Table.from_batches(pending), row_group_size=ROW_GROUP_ROWS)
        if fmt == CSV and source.text.counted % 2 == 1:
            problem = _find_unclosed_quote(open_source, options)
            if problem:
                raise ImportFailed(problem)
        if rows == 0:
            raise ImportFailed("the file has a header but no rows" if fmt == CSV else "the file has no rows")
        report(rows, rows, size_bytes)
        return ImportResult(
            format=fmt, delimiter=options.delimiter, row_count=old_rows + rows, columns=stats.columns(),
            encoding=options.encoding, quote_char=options.quote_char, compression=options.compression,
            appended_rows=rows,
        )
    finally:
        source.close()


def _failure(open_source: Opener, options: Options, exc: Exception, rows: int, limits: Limits) -> Exception:
    message = str(exc)
    fmt = options.format
    if "straddl" in message and not options.block_bytes and big_block(limits) > SMALL_BLOCK:
        return _NeedBigBlocks()
    if fmt == CSV:
        if "invalid UTF8" in message or "UTF-8" in message:
            return _not_utf8(open_source, options.compression)
        conversion = _CSV_COLUMN_ERROR.search(message)
        if conversion:
            return _conversion_failure(open_source, options, conversion)
        if "straddl" in message:
            problem = _find_unclosed_quote(open_source, options)
            if problem:
                return ImportFailed(problem)
        if _CSV_ROW_ERROR.search(message):
            return _explain(fmt, exc, rows, limits, _find_ragged_line(open_source, options))
    if fmt == JSONL and "straddl" not in message:
        where = _find_bad_json_line(open_source, options.compression, options.encoding)
        if where:
            return ImportFailed(f"could not read the file as JSON Lines: {where}")
        if "changed from" in message:
            return ImportFailed(
                f"could not read the file as JSON Lines: a field holds values of different kinds in different lines ({message.split(chr(10))[0]})"
            )
    if isinstance(exc, OSError) and options.compression != NONE:
        return _Damaged(f"the {options.compression} data is damaged or cut short ({exc}); upload the complete file")
    return _explain(fmt, exc, rows, limits)


def _conversion_failure(open_source: Opener, options: Options, match: re.Match[str]) -> Exception:
    position, row, type_name, value = int(match.group(1)), match.group(2), match.group(3), match.group(4)
    names = _csv_header(open_source, options)
    if names is None or position >= len(names):
        return ImportFailed(f"a value cannot be read as {type_name}: '{value[:80]}'")
    where = f"line {row}, " if row else ""
    return _Retry(names[position], f"{where}column '{names[position]}': '{value[:80]}' is not {type_name}")


def _csv_header(open_source: Opener, options: Options) -> list[str] | None:
    source = _Source(open_source, options.compression)
    try:
        schema, _ = _open_csv(source, options, set(), {}, Limits())
        return schema.names
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError):
        return None
    finally:
        source.close()


def _check_cells(batch: pa.RecordBatch, rows_before: int, limits: Limits) -> None:
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not _is_bytes(column.type):
            continue
        lengths = pc.binary_length(column)
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


def read_column_names(open_source: Opener, filename: str, options: Options, limits: Limits) -> tuple[Options, list[str]]:
    """The settled options and the (unique) column names of a file, cheaply: for checking
    an append before it is queued."""
    options = settle_options(open_source, filename, options, limits)
    source = _Source(open_source, options.compression)
    try:
        schema, _, _ = _open(source, dataclasses.replace(options, block_bytes=big_block(limits)), set(), {}, limits)
        return options, unique_names(schema.names)
    except UnicodeDecodeError:
        raise _not_utf8(open_source, options.compression) from None
    except (pa.ArrowInvalid, OSError) as exc:
        failure = _failure(open_source, dataclasses.replace(options, block_bytes=big_block(limits)), exc, 0, limits)
        if isinstance(failure, _Damaged):
            failure = ImportFailed(str(failure))
        raise (failure if isinstance(failure, ImportFailed) else ImportFailed(str(exc))) from None
    finally:
        source.close()
