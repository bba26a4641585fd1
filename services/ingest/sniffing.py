"""Sniffing an uploaded file: its compression, format, encoding, delimiter and quote
character, from its name and its first bytes, settled into the Options of an import."""

from __future__ import annotations

import codecs
import csv
import re

import pyarrow as pa

from services.ingest.reading import (
    ARROW,
    CSV,
    FORMAT_NAMES,
    GZIP,
    JSONL,
    LATIN1,
    NONE,
    PARQUET,
    QUOTES,
    TEXT_FORMATS,
    UTF8,
    UTF16,
    ZSTD,
    ImportFailed,
    Limits,
    Opener,
    Options,
    Source,
    read_exactly,
)

SNIFF_BYTES = 64 * 1024
_EXTENSIONS = {
    ".csv": CSV, ".tsv": CSV, ".tab": CSV, ".txt": CSV,
    ".parquet": PARQUET, ".pq": PARQUET,
    ".jsonl": JSONL, ".ndjson": JSONL, ".json": JSONL,
    ".arrow": ARROW, ".feather": ARROW, ".ipc": ARROW, ".arrows": ARROW,
}
_COMPRESSED_EXTENSIONS = {".gz": GZIP, ".gzip": GZIP, ".zst": ZSTD, ".zstd": ZSTD}


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
    if decode_head(head, sniff_encoding(head)).lstrip("\ufeff \t\r\n")[:1] == "{":
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


def decode_head(head: bytes, encoding: str) -> str:
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
    return sniff_dialect(filename, decode_head(head, sniff_encoding(head)), len(head) < SNIFF_BYTES)[0]


def _read_head(open_source: Opener, compression: str) -> bytes:
    source = Source(open_source, compression)
    try:
        return read_exactly(source.text, SNIFF_BYTES)
    except (OSError, pa.ArrowException) as exc:
        raise ImportFailed(
            f"the {compression} data is damaged or cut short ({exc}); upload the complete file"
        ) from None
    finally:
        source.close()


def _position(prefix: bytes, encoding: str) -> tuple[int, int]:
    """1-based (line, column) of the character after `prefix`."""
    text = prefix.decode(encoding, errors="replace")
    line = text.count("\n") + 1
    return line, len(text) - (text.rfind("\n") + 1) + 1


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
            raise ImportFailed(
                f"{FORMAT_NAMES[fmt]} files are read as they are; upload the file without {compression} compression"
            )
        return Options(format=fmt, compression=NONE)
    encoding = options.encoding or sniff_encoding(head)
    if encoding != UTF16 and b"\x00" in head:
        at = head.index(b"\x00")
        line, column = _position(head[:at], LATIN1)
        raise ImportFailed(
            f"the file looks binary, not {FORMAT_NAMES[fmt]} text (a zero byte at line {line}, column {column}); "
            "upload a text file, or name a Parquet or Arrow file .parquet or .arrow"
        )
    if fmt == JSONL:
        return Options(format=fmt, compression=compression, encoding=encoding)
    text = decode_head(head, encoding)
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
