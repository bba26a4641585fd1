"""The importer alone: formats, column names, statistics, and clear failures."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from services.ingest import rows
from services.ingest.checksum import crc32c
from services.ingest.importer import ImportFailed, import_file, unique_names

TEXTS = [
    "The battery lasts two full days, which surprised me.",
    "Screen cracked within a week, support was unhelpful.",
    "Decent value for the price, though the case feels cheap.",
    "Fast shipping, works exactly as described, five stars.",
]


def run_import(tmp_path: Path, data: bytes, filename: str = "data.csv", **options: str) -> tuple[object, Path]:
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
        (b"a,b\n1,caf\xe9\n", "data.csv", "not valid UTF-8"),
        (b"\x00\x01\xff\xfe\x00garbage\x99\n", "data.csv", "UTF-8"),
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
