"""The importer alone: formats, column names, statistics, and clear failures."""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.ingest import rows
from services.ingest.checksum import crc32c
from services.ingest.importer import import_file, unique_names
from services.ingest.reading import ImportFailed, Limits, Options

TEXTS = [
    "The battery lasts two full days, which surprised me.",
    "Screen cracked within a week, support was unhelpful.",
    "Decent value for the price, though the case feels cheap.",
    "Fast shipping, works exactly as described, five stars.",
]


def run_import(tmp_path: Path, data: bytes, filename: str = "data.csv", **options: Any) -> tuple[Any, Path]:
    source = tmp_path / "source"
    source.write_bytes(data)
    out = tmp_path / "rows.parquet"
    result = import_file(lambda: open(source, "rb"), lambda: open(out, "wb"), filename, len(data), **options)
    return result, out


def failure(tmp_path: Path, data: bytes, filename: str = "data.csv") -> str:
    with pytest.raises(ImportFailed) as err:
        run_import(tmp_path, data, filename)
    return str(err.value)


def test_csv_with_commas_inside_quotes(tmp_path: Path) -> None:
    data = b'id,review,label\n' + b"".join(
        f'{i},"{t}",{"pos" if i % 2 else "neg"}\n'.encode() for i, t in enumerate(TEXTS)
    )
    result, out = run_import(tmp_path, data)
    table = pq.read_table(out)
    assert table.column_names == ["__row", "id", "review", "label"]
    assert table.column("__row").to_pylist() == [0, 1, 2, 3]
    assert table.column("review").to_pylist() == TEXTS
    assert result.row_count == 4 and result.format == "csv" and result.delimiter == ","


def test_tsv_is_sniffed(tmp_path: Path) -> None:
    data = b"a\tb\n1\thello, there\n2\tgood bye\n"
    result, out = run_import(tmp_path, data, "data.tsv")
    assert result.delimiter == "\t"
    assert pq.read_table(out).column("b").to_pylist() == ["hello, there", "good bye"]


def test_semicolon_delimiter_given(tmp_path: Path) -> None:
    result, out = run_import(tmp_path, b"a;b\n1;x\n", delimiter=";")
    assert pq.read_table(out).column_names == ["__row", "a", "b"]


def test_json_lines(tmp_path: Path) -> None:
    data = b'{"text": "alpha beta", "n": 1}\n{"text": null, "n": 2}\n'
    result, out = run_import(tmp_path, data, "data.jsonl")
    assert result.format == "jsonl"
    assert pq.read_table(out).column("text").to_pylist() == ["alpha beta", None]
    text = next(c for c in result.columns if c.name == "text")
    assert text.null_count == 1


def test_parquet_and_arrow(tmp_path: Path) -> None:
    table = pa.table({"text": TEXTS, "score": [1.5, 2.5, None, 4.0]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    result, out = run_import(tmp_path, sink.getvalue(), "data.parquet")
    assert result.format == "parquet" and result.row_count == 4
    assert pq.read_table(out).column("score").to_pylist() == [1.5, 2.5, None, 4.0]

    sink = io.BytesIO()
    feather.write_feather(table, sink)
    result, out = run_import(tmp_path, sink.getvalue(), "data.feather")
    assert result.format == "arrow" and result.row_count == 4

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    result, out = run_import(tmp_path, sink.getvalue().to_pybytes(), "data.arrows")
    assert result.format == "arrow" and pq.read_table(out).column("text").to_pylist() == TEXTS


def test_statistics_suggest_the_free_text_column(tmp_path: Path) -> None:
    data = b"id,review,label\n" + b"".join(f'{i},"{t}",x\n'.encode() for i, t in enumerate(TEXTS))
    result, _ = run_import(tmp_path, data)
    by_name = {c.name: c for c in result.columns}
    assert by_name["review"].suggested and by_name["review"].type == "string"
    assert by_name["review"].distinct_ratio == 1.0
    assert by_name["review"].mean_length == pytest.approx(sum(map(len, TEXTS)) / 4)
    assert not by_name["label"].suggested and by_name["label"].distinct_ratio == 0.25
    assert not by_name["id"].suggested and by_name["id"].type == "int64"


def test_duplicate_and_empty_column_names_become_unique(tmp_path: Path) -> None:
    assert unique_names(["a", "a", "", "__row", "a_2"]) == ["a", "a_2", "column_3", "__row_2", "a_2_2"]
    _, out = run_import(tmp_path, b"a,a,\n1,2,3\n")
    assert pq.read_table(out).column_names == ["__row", "a", "a_2", "column_3"]


def test_a_column_that_turns_to_text_late_is_read_as_text(tmp_path: Path) -> None:
    data = b"n\n" + b"".join(b"%d\n" % i for i in range(300_000)) + b"not a number\n"
    result, out = run_import(tmp_path, data)
    assert result.columns[0].type == "string" and result.row_count == 300_001


@pytest.mark.parametrize(
    ("data", "filename", "expected"),
    [
        (b"", "data.csv", "the file is empty"),
        (b"a,b\n", "data.csv", "header but no rows"),
        (b'a,b\n1,"never closed\n2,x\n', "data.csv", "quoted value is never closed"),
        (
            "a,b\n1,naïve\n2,caf\xe9\n".encode().replace(b"\xc3\xa9", b"\xe9"),
            "data.csv",
            "line 3, column 6: byte 0xe9 is not valid UTF-8",
        ),
        (b"\x00\x01\xff\xfe\x00garbage\x99\n", "data.csv", "the file looks binary"),
        (b"a,b\n1,2\n3,4,5\n", "data.csv", "line 3 has 3 values where the header has 2 columns"),
        (b'{"a": 1}\n{"a": 2\n{"a": 3}\n', "data.jsonl", "line 2, column 1 is not valid JSON"),
        (b'{"a": 1\n', "data.jsonl", "could not read the file as JSON Lines"),
        (b"PAR1 this is not parquet", "data.parquet", "could not read the file as Parquet"),
    ],
)
def test_bad_input_fails_with_a_clear_message(tmp_path: Path, data: bytes, filename: str, expected: str) -> None:
    assert expected in failure(tmp_path, data, filename)


def test_rows_page_sort_filter_and_stream(tmp_path: Path) -> None:
    data = b"id,review\n" + b"".join(f'{i},"{t}"\n'.encode() for i, t in enumerate(TEXTS))
    _, out = run_import(tmp_path, data)
    parquet = pq.ParquetFile(out)
    page = rows.list_rows(parquet, [], 1, 2)
    assert page.total_size == 4 and [i for i, _ in page.rows] == [1, 2]
    page = rows.list_rows(parquet, ["id"], 0, 10, order_by="review desc")
    assert [i for i, _ in page.rows] == [0, 1, 3, 2]
    page = rows.list_rows(parquet, ["review"], 0, 10, filter_text="CASE")
    assert page.total_size == 1 and page.rows[0] == (2, [TEXTS[2]])
    assert rows.get_rows(parquet, [3, 0, 3], ["id"]) == [(3, [3]), (0, [0]), (3, [3])]
    batches = list(rows.stream_batches(parquet, ["id"], 1, 0, 2))
    assert [(s, b.num_rows) for s, b in batches] == [(1, 2), (3, 1)]
    assert batches[0][1].schema.names == ["__row", "id"]
    with pytest.raises(Exception, match="column 'body' not found; the dataset has: id, review"):
        rows.list_rows(parquet, ["body"], 0, 10)


def test_crc32c_known_values() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA


# --- encodings, compression, quotes ------------------------------------------------------


def test_latin1_is_sniffed_and_utf16_with_bom_is_read(tmp_path: Path) -> None:
    result, out = run_import(tmp_path, "name,city\nJosé,Málaga\nZoë,Köln\n".encode("latin-1"))
    assert result.encoding == "latin-1"
    assert pq.read_table(out).column("city").to_pylist() == ["Málaga", "Köln"]
    result, out = run_import(tmp_path, "name\tcity\nJosé\tMálaga\n".encode("utf-16"), "people.tsv")
    assert result.encoding == "utf-16" and result.delimiter == "\t"
    assert pq.read_table(out).column("city").to_pylist() == ["Málaga"]
    result, out = run_import(tmp_path, "\ufeffname,city\nZoë,Köln\n".encode())
    assert result.encoding == "utf-8" and pq.read_table(out).column_names == ["__row", "name", "city"]


def test_encoding_can_be_overridden(tmp_path: Path) -> None:
    data = "a,b\n1,caf\xe9\n".encode("latin-1")
    with pytest.raises(ImportFailed, match="line 2, column 6: byte 0xe9 is not valid UTF-8"):
        run_import(tmp_path, data, options=Options(encoding="utf-8"))


def test_quote_char_is_sniffed_and_can_be_given(tmp_path: Path) -> None:
    result, out = run_import(tmp_path, b"a;b\n1;'x;y'\n2;'p;q'\n")
    assert result.quote_char == "'" and pq.read_table(out).column("b").to_pylist() == ["x;y", "p;q"]
    result, out = run_import(tmp_path, b"a;b\n1;'x'\n2;'p'\n", options=Options(quote_char='"'))
    assert pq.read_table(out).column("b").to_pylist() == ["'x'", "'p'"]


def test_gzip_and_zstd_text_files(tmp_path: Path) -> None:
    csv_bytes = b"id,text\n1,alpha\n2,beta\n"
    result, out = run_import(tmp_path, gzip.compress(csv_bytes), "data.csv.gz")
    assert result.compression == "gzip" and pq.read_table(out).column("text").to_pylist() == ["alpha", "beta"]
    jsonl = b'{"t": "alpha"}\n{"t": "beta"}\n'
    result, out = run_import(tmp_path, pa.compress(jsonl, codec="zstd", asbytes=True), "data.jsonl.zst")
    assert result.compression == "zstd" and result.format == "jsonl" and result.row_count == 2
    with pytest.raises(ImportFailed, match="gzip data is damaged or cut short"):
        run_import(tmp_path, gzip.compress(csv_bytes * 1000)[:-40], "data.csv.gz")


# --- limits -------------------------------------------------------------------------------


def test_limits_on_rows_columns_and_cells(tmp_path: Path) -> None:
    with pytest.raises(ImportFailed, match="more than 100 rows.*EMBEDVIZ_MAX_ROWS"):
        run_import(tmp_path, b"a\n" + b"1\n" * 101, limits=Limits(max_rows=100))
    with pytest.raises(ImportFailed, match="at most 10 \\(EMBEDVIZ_MAX_COLUMNS\\)"):
        run_import(
            tmp_path,
            b",".join(b"c%d" % i for i in range(11)) + b"\n" + b"1," * 10 + b"1\n",
            limits=Limits(max_columns=10),
        )
    with pytest.raises(ImportFailed, match="row 2, column 'b' holds 5000 bytes; a cell may hold at most 1000"):
        run_import(tmp_path, b"a,b\n1,x\n2," + b"y" * 5000 + b"\n", limits=Limits(max_cell_bytes=1000))
    # a 100 MB cell arrives as 100 kB of gzip; it is refused without being held in memory
    with pytest.raises(ImportFailed, match="row 1 is too long to read.*EMBEDVIZ_MAX_CELL_BYTES"):
        run_import(tmp_path, gzip.compress(b"a,b\n1," + b"x" * (100 << 20) + b"\n", 1), "big.csv.gz")


# --- append ---------------------------------------------------------------------------------


def test_append_continues_row_indexes_and_checks_columns(tmp_path: Path) -> None:
    _, first = run_import(tmp_path, b"id,text\n1,alpha\n2,beta\n")
    kept = tmp_path / "first.parquet"
    first.rename(kept)
    with pq.ParquetFile(kept) as old:
        result, out = run_import(tmp_path, b"text,id\ngamma,3\n", append_to=old)
    table = pq.read_table(out)
    assert result.row_count == 3 and result.appended_rows == 1
    assert table.column("__row").to_pylist() == [0, 1, 2]
    assert table.column("text").to_pylist() == ["alpha", "beta", "gamma"]
    with pq.ParquetFile(kept) as old, pytest.raises(ImportFailed, match="missing 'id'; not in the dataset 'label'"):
        run_import(tmp_path, b"text,label\ngamma,x\n", append_to=old)
    with pq.ParquetFile(kept) as old, pytest.raises(ImportFailed, match="column 'id': 'three' is not int64"):
        run_import(tmp_path, b"id,text\nthree,gamma\n", append_to=old)


# --- filters ----------------------------------------------------------------------------------


def test_filter_grammar(tmp_path: Path) -> None:
    data = b"id,review,label,score\n" + b"".join(
        f'{i},"{t}",{"pos" if i % 2 else "neg"},{i * 1.5}\n'.encode() for i, t in enumerate(TEXTS)
    )
    _, out = run_import(tmp_path, data)
    parquet = pq.ParquetFile(out)

    def hits(text: str) -> list[int]:
        return [i for i, _ in rows.list_rows(parquet, ["id"], 0, 100, filter_text=text).rows]

    assert hits("label = neg") == [0, 2]
    assert hits('label != "neg"') == [1, 3]
    assert hits("id > 1") == [2, 3]
    assert hits("score <= 1.5") == [0, 1]
    assert hits("id >= 0.5 AND label = 'pos'") == [1, 3]
    assert hits('review contains "CASE"') == [2]
    assert hits("`review` contains week") == [1]
    assert hits("screen") == [1]  # plain text: any text column, any case
    assert hits('"id > 1"') == []  # quoted: searched as text
    assert hits("label = null") == []
    for bad, message in [
        ("label =", "has no value after '='"),
        ("body = x", "column 'body' not found; the dataset has: id, review, label, score"),
        ("id = abc", "column 'id' holds numbers; 'abc' is not a number"),
        ("id > 1 OR id < 0", "expected AND or the end at character 8"),
        ('review contains "open', "is never closed"),
        ("id contains 1", "'contains' works on text columns"),
    ]:
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            hits(bad)


# --- malformed files, generated -----------------------------------------------------------------

_SEEDS = [
    b"id,text\n1,hello\n2,world\n",
    b'{"a": 1, "t": "x"}\n{"a": 2, "t": "y"}\n',
    b'a;b\n1;"quoted; value"\n',
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(_SEEDS),
    cut=st.integers(min_value=0, max_value=40),
    junk=st.binary(max_size=40),
    at=st.integers(min_value=0, max_value=40),
    filename=st.sampled_from(["d.csv", "d.jsonl", "d.parquet", "d.arrow", "d.tsv", "d.csv.gz", "d.txt"]),
    compress=st.sampled_from(["none", "gzip", "zstd", "truncated-gzip"]),
)
def test_malformed_files_never_crash_and_leave_no_output(
    tmp_path: Path, seed: bytes, cut: int, junk: bytes, at: int, filename: str, compress: str
) -> None:
    data = seed[: len(seed) - cut] if cut < len(seed) else b""
    at = min(at, len(data))
    data = data[:at] + junk + data[at:]
    if compress == "gzip":
        data = gzip.compress(data)
    elif compress == "zstd":
        data = pa.compress(data, codec="zstd", asbytes=True)
    elif compress == "truncated-gzip":
        data = gzip.compress(data)[: max(1, len(data) // 2)]
    source = tmp_path / "source"
    source.write_bytes(data)
    out = tmp_path / "rows.parquet"
    out.unlink(missing_ok=True)
    try:
        result = import_file(lambda: open(source, "rb"), lambda: open(out, "wb"), filename, len(data))
    except ImportFailed as failed:
        assert str(failed)  # a message for a person; the service deletes the partial output
        return
    assert result.row_count > 0  # what was accepted reads back whole
    assert pq.read_table(out).num_rows == result.row_count


def test_a_cell_longer_than_a_block_but_within_the_limit_is_read(tmp_path: Path) -> None:
    long = "word " * 400_000  # 2 MB: more than the 1 MiB first block, less than the 4 MiB limit
    result, out = run_import(tmp_path, f'a,b\n1,"{long}"\n2,short\n'.encode())
    assert result.row_count == 2 and pq.read_table(out).column("b").to_pylist()[0] == long


@pytest.mark.parametrize("compressed", [False, True], ids=["csv", "csv.gz"])
def test_progress_follows_the_rows_not_the_read_ahead(tmp_path: Path, compressed: bool) -> None:
    """pyarrow reads a whole file ahead of the rows it hands out; the progress a person sees
    must still follow the rows: never 'all done' while rows are still to come."""
    n = 400_000
    text = "id,text\n" + "".join(f"{i},row {i} of a long table with some words {i * 7919 % 100003}\n" for i in range(n))
    data = gzip.compress(text.encode(), 1) if compressed else text.encode()
    seen: list[tuple[int, int]] = []
    run_import(
        tmp_path, data, "table.csv.gz" if compressed else "table.csv",
        on_progress=lambda done, total, read: seen.append((done, total)),
    )
    middle = [(done, total) for done, total in seen[:-1] if 0.2 * n <= done <= 0.8 * n]
    assert middle, seen
    for done, total in middle:
        assert done < total, f"{done} of {n} rows parsed, yet progress said {done}/{total}"
        assert abs(total - n) / n < 0.15, f"estimated {total} rows at {done} of {n}"
    assert seen[-1] == (n, n)
