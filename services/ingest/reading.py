"""An uploaded file opened for reading: the options and limits of an import, the streams
that count what was read (progress) and decompress, and pyarrow's reader for each format."""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Literal, TypeAlias, cast

import numpy as np
import pyarrow as pa
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
DIAGNOSE_BLOCK = 1 << 20
SMALL_BLOCK = 1 << 20  # a row must fit in a block; longer ones retry with big_block(limits)
FORMAT_NAMES = {CSV: "CSV", PARQUET: "Parquet", JSONL: "JSON Lines", ARROW: "Arrow"}


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


# Opens the uploaded file: a blob store stream (pyarrow) or, in tests, a Python file.
Opener: TypeAlias = "Callable[[], pa.NativeFile | BinaryIO]"


class CountingReader(io.RawIOBase):
    """A file wrapper that counts the bytes read and, when asked, one byte value (the
    quote character: an odd count is the cheap hint of an unclosed quote)."""

    name = "the uploaded file"  # what TextIOWrapper shows as its name

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


class Source:
    """The uploaded file opened for reading: raw bytes counted (progress), then the
    decompressed bytes (what the parsers read)."""

    def __init__(self, open_source: Opener, compression: str, count_byte: int | None = None) -> None:
        self.raw = CountingReader(open_source())
        stream: Any = self.raw
        if compression != NONE:
            codec = cast("Literal['gzip', 'zstd']", compression)  # one of COMPRESSIONS (settle_options)
            stream = pa.CompressedInputStream(pa.PythonFile(self.raw, mode="r"), codec)
        self.text = CountingReader(stream, count_byte)

    def close(self) -> None:
        self.text.close()
        self.raw.close()


def read_exactly(stream: Any, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def big_block(limits: Limits) -> int:
    """A block that holds a row with a cell of the largest allowed size."""
    return max(SMALL_BLOCK, min(2 * limits.max_cell_bytes + (1 << 16), 256 << 20))


def open_csv(
    source: Source, options: Options, as_string: set[str], types: dict[str, pa.DataType], limits: Limits
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    block = options.block_bytes or SMALL_BLOCK
    reader = pacsv.open_csv(
        cast("IO[bytes]", source.text),  # pyarrow reads any file object; its stubs name only IO
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


def open_batches(
    source: Source, options: Options, as_string: set[str], types: dict[str, pa.DataType], limits: Limits
) -> tuple[pa.Schema, Iterator[pa.RecordBatch], int]:
    """(schema, batches, rows in all when the format tells it up front, else 0)"""
    fmt = options.format
    if fmt == CSV:
        schema, batches = open_csv(source, options, as_string, types, limits)
        return schema, batches, 0
    if fmt == JSONL:
        block = options.block_bytes or SMALL_BLOCK
        stream: Any = source.text if options.encoding == UTF8 else Transcoder(source.text, options.encoding)
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


class Transcoder(io.RawIOBase):
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
