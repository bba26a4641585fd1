"""Diagnosis: why a file could not be read, in words a person can act on, naming the
line and column where it can. pyarrow's readers raise one exception type (ArrowInvalid)
for every parse and conversion failure, so for those its message is the only signal;
everything else is told apart by its type."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re

import pyarrow as pa

from services.ingest.reading import (
    ARROW,
    CSV,
    DIAGNOSE_BLOCK,
    FORMAT_NAMES,
    JSONL,
    NONE,
    PARQUET,
    SMALL_BLOCK,
    ImportFailed,
    Limits,
    Opener,
    Options,
    Source,
    big_block,
    open_csv,
)


class ReadAsText(Exception):
    """A CSV column typed from the first rows meets a value of another type later on:
    read it again with that column as text (or fail with `message` if it already was)."""

    def __init__(self, column: str, message: str) -> None:
        self.column = column
        self.message = message


class NeedBigBlocks(Exception):
    """A row did not fit in a small block: read the file again with big ones."""


class Damaged(Exception):
    """The compressed stream failed mid-file. Once it was a read that went wrong, not the
    file (seen under load), so the file is read again before a person is told it is damaged."""


def find_bad_utf8(open_source: Opener, compression: str) -> str | None:
    """'line L, column C: byte 0xNN ...' for the first byte that is not UTF-8, or None."""
    source = Source(open_source, compression)
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


def not_utf8(open_source: Opener, compression: str) -> ImportFailed:
    where = find_bad_utf8(open_source, compression)
    detail = f" ({where})" if where else ""
    return ImportFailed(
        f"the file is not valid UTF-8 text{detail}; save it as UTF-8, or choose its encoding "
        "(latin-1, utf-16) when you finish the upload"
    )


def find_bad_json_line(open_source: Opener, compression: str, encoding: str) -> str | None:
    source = Source(open_source, compression)
    try:
        text = io.TextIOWrapper(source.text, encoding=encoding, errors="strict", newline="")
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


def find_ragged_line(open_source: Opener, options: Options) -> str:
    """'line N' of the first record whose number of values differs from the header's."""
    source = Source(open_source, options.compression)
    try:
        text = io.TextIOWrapper(source.text, encoding=options.encoding, errors="replace", newline="")
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


def find_unclosed_quote(open_source: Opener, options: Options) -> str | None:
    """An odd number of quote characters: either literal quotes inside unquoted values
    (fine) or a quoted value that never ends (pyarrow silently takes the rest of the file)."""
    source = Source(open_source, options.compression)
    try:
        text = io.TextIOWrapper(source.text, encoding=options.encoding, errors="replace", newline="")
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


_CSV_COLUMN_ERROR = re.compile(
    r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (\w+): invalid value '(.*)'", re.S
)
_CSV_ROW_ERROR = re.compile(r"CSV parse error: (?:Row #(\d+): )?Expected (\d+) columns, got (\d+)")


def explain(fmt: str, exc: Exception, rows_done: int, limits: Limits, where_found: str = "") -> ImportFailed:
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
    what = FORMAT_NAMES[fmt]
    if fmt == PARQUET and (
        "magic bytes" in message or "footer" in message.lower() or "Couldn't deserialize" in message
    ):
        return ImportFailed(
            "could not read the file as Parquet: it is cut short or damaged (its footer is missing or broken); "
            "upload the complete file"
        )
    if fmt == ARROW:
        return ImportFailed(f"could not read the file as Arrow IPC: it is cut short or damaged ({message})")
    return ImportFailed(f"could not read the file as {what}: {message}")


def diagnose(open_source: Opener, options: Options, exc: Exception, rows: int, limits: Limits) -> Exception:
    """What to raise for `exc`, met after `rows` rows: ImportFailed for a person, or one of
    the signals above that make import_file read the file again differently."""
    fmt = options.format
    if isinstance(exc, UnicodeDecodeError):
        return not_utf8(open_source, options.compression)
    if isinstance(exc, OSError):  # the stream, not the parser (pyarrow's parse errors are ArrowInvalid)
        if options.compression != NONE:
            return Damaged(f"the {options.compression} data is damaged or cut short ({exc}); upload the complete file")
        return explain(fmt, exc, rows, limits)
    message = str(exc)
    if "straddl" in message and not options.block_bytes and big_block(limits) > SMALL_BLOCK:
        return NeedBigBlocks()
    if fmt == CSV:
        if "invalid UTF8" in message or "UTF-8" in message:
            return not_utf8(open_source, options.compression)
        conversion = _CSV_COLUMN_ERROR.search(message)
        if conversion:
            return _conversion_failure(open_source, options, conversion)
        if "straddl" in message:
            problem = find_unclosed_quote(open_source, options)
            if problem:
                return ImportFailed(problem)
        if _CSV_ROW_ERROR.search(message):
            return explain(fmt, exc, rows, limits, find_ragged_line(open_source, options))
    if fmt == JSONL and "straddl" not in message:
        where = find_bad_json_line(open_source, options.compression, options.encoding)
        if where:
            return ImportFailed(f"could not read the file as JSON Lines: {where}")
        if "changed from" in message:
            return ImportFailed(
                "could not read the file as JSON Lines: a field holds values of different kinds in different lines "
                f"({message.split(chr(10))[0]})"
            )
    return explain(fmt, exc, rows, limits)


def _conversion_failure(open_source: Opener, options: Options, match: re.Match[str]) -> Exception:
    position, row, type_name, value = int(match.group(1)), match.group(2), match.group(3), match.group(4)
    names = _csv_header(open_source, options)
    if names is None or position >= len(names):
        return ImportFailed(f"a value cannot be read as {type_name}: '{value[:80]}'")
    where = f"line {row}, " if row else ""
    return ReadAsText(names[position], f"{where}column '{names[position]}': '{value[:80]}' is not {type_name}")


def _csv_header(open_source: Opener, options: Options) -> list[str] | None:
    source = Source(open_source, options.compression)
    try:
        schema, _ = open_csv(source, options, set(), {}, Limits())
        return schema.names
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError):
        return None
    finally:
        source.close()
